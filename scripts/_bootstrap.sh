# Sourced by scripts/serve and scripts/test: makes sure .venv exists and holds what
# the caller needs, so both commands work on a fresh machine with only Python 3.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
    echo "bootstrap: creating $venv" >&2
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
fi

# install_into_venv STAMP PIP-ARGS...: reinstall only when setup.py changed since STAMP.
install_into_venv() {
    local stamp="$venv/.$1"; shift
    if [ ! -f "$stamp" ] || [ "$root/setup.py" -nt "$stamp" ]; then
        echo "bootstrap: pip install $*" >&2
        "$venv/bin/python" -m pip install --quiet "$@"
        touch "$stamp"
    fi
}
