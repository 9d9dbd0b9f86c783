#!/usr/bin/env bash
# Build the `kefu-node` executable with PyInstaller, from a clean checkout, in one command:
#
#   packaging/build.sh [--mode onedir|onefile] [--force] [--no-measure] [--runs N]
#
# It creates its own build venv (build/packaging/venv: the node's runtime dependencies and
# PyInstaller, never torch), stamps version / git commit / build date into the binary, and
# writes the shipped archive dist/kefu-node-<version>-linux-<arch>.tar.gz (onedir, the default:
# a directory with the `kefu-node` executable, unpacked once at install) or, for comparison,
# dist/kefu-node (onefile: unpacks itself into /tmp at every start; see docs/packaging.md).
# A build whose inputs (sources, shipped models, this directory) did not change since the
# last build is reused (--force rebuilds). Then it prints binary size, cold start to the first
# answered turn and RSS after start (packaging/measure.py; --no-measure skips that).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

mode=onedir force=0 measure=1 runs=3
while (($#)); do
    case "$1" in
        --mode) mode=$2; shift 2 ;;
        --force) force=1; shift ;;
        --no-measure) measure=0; shift ;;
        --runs) runs=$2; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
case "$mode" in onefile|onedir) ;; *) echo "build.sh: --mode onefile|onedir" >&2; exit 2 ;; esac

work=build/packaging
venv=$work/venv
mkdir -p "$work" dist

# Everything that ends up in the binary; a change to any of it means a new build.
inputs_hash() {
    {
        find kefu node models packaging -type f \
            \( -name '*.py' -o -name '*.yaml' -o -name '*.json' -o -name '*.onnx' \
               -o -name '*.sig' -o -name '*.pub' -o -name '*.spec' -o -name '*.sh' \) \
            -not -path '*/__pycache__/*' -not -path 'models/data/*' -print0 \
            | sort -z | xargs -0 sha256sum
        sha256sum pyproject.toml
        echo "mode=$mode"
    } | sha256sum | cut -d' ' -f1
}
want=$(inputs_hash)
if [[ $mode == onefile ]]; then out=dist/kefu-node; else out=dist/onedir/kefu-node/kefu-node; fi
stamp=dist/.kefu-node-$mode.inputs

if ((force)) || [[ ! -x $out || ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    t0=$(date +%s)
    if [[ ! -x $venv/bin/python ]]; then
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install -q --upgrade pip
    fi
    py=$venv/bin/python
    # PyInstaller 6.10+ (Python 3.11 support, current onnxruntime/grpc hooks in contrib).
    log=$work/pip.log
    {
        "$py" -m pip install "pyinstaller>=6.10,<7" "pyinstaller-hooks-contrib>=2024.8"
        # The node's runtime dependencies only (pyproject's core list: no torch, no [train]).
        "$py" -m pip install .
        "$py" -m pip install --no-deps --force-reinstall .
    } > "$log" 2>&1 || { cat "$log" >&2; echo "build.sh: pip failed (log: $log)" >&2; exit 1; }
    if "$py" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)'; then
        echo "build.sh: torch is installed in $venv; a node must not need it" >&2
        exit 1
    fi
    version=$("$py" -c 'import kefu; print(kefu.__version__)')
    commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
    if [[ $commit != unknown && -n $(git status --porcelain -- kefu node models packaging pyproject.toml 2>/dev/null) ]]; then
        commit="$commit-dirty"
    fi
    if [[ -n ${SOURCE_DATE_EPOCH:-} ]]; then
        built=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
    else
        built=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    fi
    info=$work/_build_info.json
    printf '{"version": "%s", "commit": "%s", "build_date": "%s", "build_mode": "%s"}\n' \
        "$version" "$commit" "$built" "$mode" > "$info"
    echo "build.sh: building kefu-node $version ($mode, commit ${commit:0:12}) with $("$py" -m PyInstaller --version 2>/dev/null | tail -1)"
    rm -rf "$work/work-$mode"
    distpath=dist
    [[ $mode == onedir ]] && distpath=dist/onedir && rm -rf dist/onedir
    # From inside $work: with the checkout as the working directory, `import kefu` would
    # find the source tree (not the installed package) and the analysis would wander into it.
    (cd "$work" && KEFU_BUILD_MODE=$mode KEFU_BUILD_INFO=$root/$info \
        "$root/$py" -m PyInstaller --noconfirm --log-level WARN \
        --distpath "$root/$distpath" --workpath "$root/$work/work-$mode" \
        "$root/packaging/kefu-node.spec")
    if [[ $mode == onedir ]]; then
        arch=$(uname -m)
        epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
        rm -f dist/kefu-node-*-linux-"$arch".tar.gz
        tar -C dist/onedir --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
            -czf "dist/kefu-node-$version-linux-$arch.tar.gz" kefu-node
        echo "build.sh: archive dist/kefu-node-$version-linux-$arch.tar.gz"
    fi
    echo "$want" > "$stamp"
    echo "build.sh: built $out in $(( $(date +%s) - t0 )) s"
else
    echo "build.sh: $out is up to date (inputs unchanged; --force rebuilds)"
fi

"$out" version
if ((measure)); then
    "$venv/bin/python" packaging/measure.py --binary "$out" --runs "$runs"
fi
