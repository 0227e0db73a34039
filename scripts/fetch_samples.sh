#!/usr/bin/env bash
# Reproduce samples/ from the package registries, so anyone can check where
# each photograph came from.  See docs/samples.md for the licences.
#
# Usage: scripts/fetch_samples.sh OUT_DIR
#
# Needs: apt-get (Debian bookworm archive; run `apt-get update` first), dpkg,
#        and a Python with pip, numpy and Pillow ($PYTHON, default python3).
# Not run by CI: it downloads ~140 MB of .deb files.
#
# The originals are checked against the SHA-256 sums recorded in
# docs/samples.md; a mismatch is reported (the archive may have moved on to
# a newer version) but the conversion still runs.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python3}
case $PYTHON in */*) [[ $PYTHON = /* ]] || PYTHON=$PWD/$PYTHON ;; esac  # the script changes folder
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Debian bookworm versions the samples were taken from.
DEBS=(
    "darknet=0.0.0+git20180914.61c9d02e-2+b4"
    "python-matplotlib-data=3.6.3-1"
    "plasma-workspace-wallpapers=4:5.27.5-2"
)
SKIMAGE="scikit-image==0.26.0"

cd "$WORK"
mkdir debs x
for spec in "${DEBS[@]}"; do
    name=${spec%%=*}
    # apt-get download as root warns about the _apt sandbox; harmless.
    if ! (cd debs && apt-get download "$spec" 2>/dev/null); then
        echo "warning: $spec not in the archive, taking the current $name" >&2
        (cd debs && apt-get download "$name")
    fi
done
for deb in debs/*.deb; do
    dpkg -x "$deb" x/
done

"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: "$SKIMAGE" -d whl
"$PYTHON" -m zipfile -e whl/scikit_image-*.whl skimage_whl/

D=x/usr/share/darknet/data
M=x/usr/share/matplotlib/mpl-data/sample_data
P=x/usr/share/wallpapers
S=skimage_whl/skimage/data

# output name | original | expected sha256 of the original
cat > manifest.txt <<EOF
dog.jpg|$D/dog.jpg|5a9522051c3cec2bbd2f6323fccba32e8fbf3ddcc2b3e2fd46b04c720bc6f866
horses.jpg|$D/horses.jpg|c8f0a677a1356569e2ce71d2fa88c1030c0ae57ecf5e14170e02d9a86a20dcb4
person_dog_horse.jpg|$D/person.jpg|cdcbab947e46110fc2b77784ac54ddbbab2640f1e44cb5e91fc8984a9793a7d1
eagle.jpg|$D/eagle.jpg|f95f57297fd51a6c5ddceb5ed6916fa759d1d65f402fee34c05b31a9608755c0
giraffe_zebra.jpg|$D/giraffe.jpg|00dc48a9b2af8a1fe4c4b79319726591f1033c7e1150f21e7577a79f3b6659f1
kites_beach.jpg|$D/kite.jpg|87410f52f79cc256c3949b48a3548632c07c8e9943468ef8caa6250f6643be8e
astronaut.jpg|$S/astronaut.png|88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5
chelsea_cat.png|$S/chelsea.png|596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb
coffee_cup.jpg|$S/coffee.png|cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7
cameraman_gray.png|$S/camera.png|b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a
grace_hopper.jpg|$M/grace_hopper.jpg|a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130
colorful_cups.jpg|$P/ColorfulCups/contents/images/2560x1600.jpg|6e0f3a72feb5a4a9fec191b77e34874c3c69e2d93040deb3f07773e73385023d
boats_evening.jpg|$P/EveningGlow/contents/images/2560x1600.jpg|586682dcb362b9f620068f10138f87d0d3649939aef238adc5807cb951976a7a
kite_sky.jpg|$P/Kite/contents/images/2560x1600.jpg|bdca288ce296a981e80659c021cf707caddc702c0c8d4247e60bd618476d47f8
EOF

# check the sums, then resize and re-encode (scripts/convert_photos.py says how)
"$PYTHON" "$HERE/convert_photos.py" "$OUT" manifest.txt
