# Sourced by the GPU-machine scripts: sets MM to the CUDA mm built by scripts/build-cuda.sh.
# $MM if set; else dist/cuda/mm; else dist/cuda/mm.gz (left when the binary is too big to carry
# unpacked) unpacked into the directory given as $1.
cuda_binary() {
  if [ -z "${MM:-}" ] && [ ! -e dist/cuda/mm ] && [ -e dist/cuda/mm.gz ]; then
    gzip -dc dist/cuda/mm.gz > "$1/mm" && chmod +x "$1/mm" && MM="$1/mm"
  fi
  MM="${MM:-dist/cuda/mm}"
}
