#!/usr/bin/env bash
# Install Chatterbox TTS 0.1.7 (CPU, offline-capable) into an existing venv.
#
#   usage: tests/chatterbox_support/install.sh /path/to/venv/bin/pip
#
# Why not just `pip install chatterbox-tts`: 0.1.7 pins torch==2.6.0 /
# torchaudio==2.6.0 (a multi-GB CUDA download) plus gradio, pykakasi and
# spacy-pkuseg, none of which the library needs at import time.  Instead:
#   1. torch==2.13.0 (CPU wheel from this machine's disk)
#   2. chatterbox-tts==0.1.7 --no-deps
#   3. its import-time needs, pinned to versions tested together, with
#      torch==2.13.0 as a pip *constraint* so nothing can replace it
#   4. setuptools>=77.0.3,<81: torch 2.13 wants >=77.0.3, resemble-perth
#      imports pkg_resources, which setuptools 81 removed
#   5. delete torchaudio/lib/*.so: torchaudio 2.11.1 (pulled in by
#      s3tokenizer) is a CUDA build whose native libs fail to load against
#      torch 2.13 CPU; chatterbox only uses its pure-Python parts
#      (transforms.Resample, compliance.kaldi.fbank).  torchaudio.load/save
#      need torchcodec and must never be used (use wave/numpy/PyAV).
# Idempotent: a second run changes nothing.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 VENV_PIP" >&2
    exit 2
fi
PIP=$1
if [[ ! -x "$PIP" ]]; then
    echo "error: $PIP is not an executable pip" >&2
    exit 2
fi
PY="$(dirname "$PIP")/python"
if [[ ! -x "$PY" ]]; then
    echo "error: no python next to $PIP (expected $PY)" >&2
    exit 2
fi

CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==2.13.0" > "$CONSTRAINTS"

PIP_ARGS=(--no-input --disable-pip-version-check)

echo "== [1/5] torch 2.13.0 (CPU)"
"$PIP" install "${PIP_ARGS[@]}" "torch==2.13.0"

echo "== [2/5] chatterbox-tts 0.1.7 without its pins"
"$PIP" install "${PIP_ARGS[@]}" --no-deps "chatterbox-tts==0.1.7"

echo "== [3/5] chatterbox runtime needs (torch held at 2.13.0)"
# Import-time needs of chatterbox 0.1.7 (tts.py, mtl_tts.py, tts_turbo.py,
# vc.py and models/*): librosa, s3tokenizer, torchaudio, transformers
# (+tokenizers, huggingface_hub), diffusers, resemble-perth (module perth),
# conformer, safetensors, pyloudnorm, omegaconf, einops, scipy, tqdm, numpy.
# Not installed (optional / lazily imported, multilingual text front-ends
# only): gradio, pykakasi (ja), spacy-pkuseg (zh), dicta_onnx (he),
# russian_text_stresser (ru).
"$PIP" install "${PIP_ARGS[@]}" -c "$CONSTRAINTS" \
    "numpy==1.26.4" \
    "librosa==0.11.0" \
    "s3tokenizer==0.3.0" \
    "torchaudio==2.11.1" \
    "transformers==5.2.0" \
    "tokenizers==0.22.2" \
    "huggingface_hub==1.33.0" \
    "diffusers==0.29.0" \
    "resemble-perth==1.0.1" \
    "conformer==0.3.2" \
    "safetensors==0.5.3" \
    "pyloudnorm==0.2.0" \
    "omegaconf==2.4.0" \
    "einops==0.8.2" \
    "scipy==1.17.1" \
    "tqdm" \
    "setuptools>=77.0.3,<81"

echo "== [4/5] strip torchaudio's CUDA native libraries"
TA_DIR=$("$PY" - <<'PYEOF'
import importlib.util, os
spec = importlib.util.find_spec("torchaudio")
print(os.path.dirname(spec.origin))
PYEOF
)
shopt -s nullglob
SOS=("$TA_DIR"/lib/*.so)
if (( ${#SOS[@]} )); then
    echo "removing ${#SOS[@]} file(s): ${SOS[*]}"
    rm -f -- "${SOS[@]}"
else
    echo "nothing to remove in $TA_DIR/lib"
fi
shopt -u nullglob

echo "== [5/5] verify"
"$PIP" check || echo "(pip check complaints above are expected: chatterbox-tts pins torch==2.6.0 etc.)"
"$PY" - <<'PYEOF'
import torch, torchaudio, pkg_resources  # noqa: F401  (perth needs pkg_resources)
assert torch.__version__.split("+")[0] == "2.13.0", torch.__version__
import perth  # noqa: F401
from chatterbox.tts import ChatterboxTTS  # noqa: F401
from chatterbox.mtl_tts import ChatterboxMultilingualTTS  # noqa: F401
from chatterbox.tts_turbo import ChatterboxTurboTTS  # noqa: F401
from torchaudio.transforms import Resample  # noqa: F401
from torchaudio.compliance import kaldi  # noqa: F401
print("chatterbox OK: torch", torch.__version__, "torchaudio", torchaudio.__version__)

# When the server (chatterbox-status) is installed here too, the pins above must not
# have broken it: every requirement of its own still satisfied, its deps still import.
from importlib import metadata
try:
    requires = metadata.requires("chatterbox-status") or []
except metadata.PackageNotFoundError:
    requires = None
if requires is not None:
    from packaging.requirements import Requirement
    broken = []
    for line in requires:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an extra's requirement
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            broken.append(f"{req} (missing)")
            continue
        if not req.specifier.contains(installed, prereleases=True):
            broken.append(f"{req} (installed {installed})")
    assert not broken, f"chatterbox-status requirements broken: {broken}"
    import aiohttp, av, hibari, numpy, chatterbox_status.app  # noqa: F401,E401
    print("chatterbox-status OK: its requirements hold; numpy", numpy.__version__)
PYEOF
