#!/bin/sh
# The GPU image's entrypoint: one line naming torch, its CUDA, the device and the C compiler Triton
# will use, then the command. A CPU-only torch is an error here, not a slow surprise later.
set -e
python - <<'PY' >&2
import shutil, subprocess, sys
import torch
cc = shutil.which("cc")
cc_version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[0] if cc else "none"
device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device visible"
print(f"scale-alibi gpu image: torch {torch.__version__}, CUDA {torch.version.cuda}, {device}, cc: {cc_version}", flush=True)
if torch.version.cuda is None or cc is None:
    sys.exit("error: this image needs the CUDA build of torch and a C compiler; rebuild it with --target gpu")
PY
exec "$@"
