# Source on the GPU machine, from the repository root, once the parts of an xz tarball of the
# missing site-packages (vLLM 0.26.0, TRL, jsonargparse, math-verify, gguf) are in /tmp/parts:
#   source benchmarks/gpu/setup.sh      (benchmarks/gpu/run.sh does, before every measurement)
# Unpacks vLLM 0.26.0, TRL, jsonargparse, math-verify, gguf (and SmolLM2's GGUF) into /tmp/site,
# installs this package without dependencies (the data the benchmarks read ships in data/). Where vLLM and
# TRL are installed already (no /tmp/parts), it only installs this package and sets the environment.
if [ ! -f /tmp/site/.unpacked ] && compgen -G "/tmp/parts/part-*" >/dev/null; then  # else: installed already
  mkdir -p /tmp/site && cat /tmp/parts/part-* | tar -xJf - -C /tmp/site && touch /tmp/site/.unpacked
fi
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export VLLM_ENABLE_V1_MULTIPROCESSING=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q --no-deps --no-build-isolation -e . >/tmp/pip-install.log 2>&1 \
  || echo "[setup] pip install -e . failed (see /tmp/pip-install.log); r1_lightning still imports from PYTHONPATH"
python -c "import vllm, torch, transformers, lightning; print('[setup] vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, 'lightning', lightning.__version__, 'GPUs', torch.cuda.device_count())"
