# Sourced by scripts/serve, scripts/test and scripts/mutation: makes sure the venv (.venv, or
# $venv_name if the caller set it) exists and holds what the caller needs, so the commands
# work on a fresh machine with only Python 3.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/${venv_name:-.venv}"
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
