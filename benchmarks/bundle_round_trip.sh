#!/bin/bash
# A device-bundle round trip on this machine, twice from scratch (`tiny`, onnxruntime, default settings):
# export the bundle, time it with a Python whose only packages are numpy and onnxruntime, import the timings,
# validate the imported LUT on held-out networks; then build a LUT directly here and validate it the same way.
#     bash benchmarks/bundle_round_trip.sh [WORK]      # output: WORK/log.txt (default runs/bench/bundle)
set -e
cd "$(dirname "$0")/.."
WORK=${1:-runs/bench/bundle}; rm -rf "$WORK"; mkdir -p "$WORK/iso/pkgs"
PY=.venv/bin/python
for m in numpy onnxruntime; do
  for d in $($PY -c "import importlib.util as u, pathlib as p; s=u.find_spec('$m'); l=p.Path(s.submodule_search_locations[0]); print(l, *[x for x in [l.with_name('$m.libs')] if x.is_dir()])"); do
    ln -s "$d" "$WORK/iso/pkgs/"
  done
done
$($PY -c "import sys; print(sys._base_executable)") -m venv --without-pip "$WORK/iso/venv"
ISO=$(realpath "$WORK/iso/venv/bin/python")
realpath "$WORK/iso/pkgs" > "$($ISO -c 'import site; print(site.getsitepackages()[0])')/only_numpy_onnxruntime.pth"
{
for k in 1 2; do
  D=$WORK/run$k; mkdir -p $D
  s=$(date +%s.%N); $PY -m nas.build_lut backend=onnxruntime bundle=$D/bundle > $D/bundle.log 2>&1; e=$(date +%s.%N)
  echo "run $k: bundle export $(echo "$e - $s" | bc) s, $(du -sh $D/bundle | cut -f1)"
  s=$(date +%s.%N); (cd $D/bundle && $ISO measure.py > measure.log 2>&1); e=$(date +%s.%N)
  echo "run $k: measure.py (numpy+onnxruntime only) $(echo "$e - $s" | bc) s"
  $PY -m nas.build_lut from_bundle=$D/bundle out=$D/imported.csv > $D/import.log 2>&1
  echo "run $k: imported LUT"; $PY -m nas.validate_lut lut=$D/imported.csv out=$D/val_imported | grep -A5 "within"
  $PY -m nas.build_lut backend=onnxruntime out=$D/direct.csv > $D/direct.log 2>&1
  echo "run $k: direct LUT"; $PY -m nas.validate_lut lut=$D/direct.csv out=$D/val_direct | grep -A5 "within"
done
} 2>&1 | tee "$WORK/log.txt"
