#!/usr/bin/env bash
# Build an offline HTML template for `dvc plots show --html-template`.
#
#   scripts/build_plots_template.sh [OUTDIR]     # OUTDIR defaults to <repo>/build
#
# dvc-render's default page loads vega, vega-lite and vega-embed from a CDN, so it renders
# blank without network. This installs those three packages from npm into OUTDIR/npm and
# writes OUTDIR/dvc-plots-template.html with their minified UMD bundles inlined.
# The result is third-party JS, so it stays out of git (build/ is ignored).
#
# Versions: dvc-render 1.x emits vega-lite v5 specs and itself uses vega 5 / vega-lite 5 /
# vega-embed 6, so we pin the last releases of those majors. Each .min.js is a
# self-contained bundle built at publish time, so pinning the three top-level versions
# pins the inlined bytes: the output is the same on every run.
# Idempotent: npm runs only when the installed versions differ from the pins.
set -euo pipefail

VEGA_VERSION=5.33.1
VEGA_LITE_VERSION=5.23.0
VEGA_EMBED_VERSION=6.29.0

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
outdir="${1:-$repo/build}"
template_in="$repo/scripts/plots_template.html.in"
prefix="$outdir/npm"
out="$outdir/dvc-plots-template.html"

die() { echo "build_plots_template: error: $*" >&2; exit 1; }

command -v npm >/dev/null 2>&1 || die "npm not found; install Node.js + npm (Debian: apt-get install -y npm)"
command -v node >/dev/null 2>&1 || die "node not found; install Node.js (Debian: apt-get install -y nodejs)"
[[ -f "$template_in" ]] || die "missing template source $template_in"

installed_version() {  # prints the installed version of package $1, or nothing
    local pj="$prefix/node_modules/$1/package.json"
    [[ -f "$pj" ]] && node -p "require(process.argv[1]).version" "$pj" || true
}

mkdir -p "$prefix"
if [[ "$(installed_version vega)" != "$VEGA_VERSION" \
   || "$(installed_version vega-lite)" != "$VEGA_LITE_VERSION" \
   || "$(installed_version vega-embed)" != "$VEGA_EMBED_VERSION" ]]; then
    echo "build_plots_template: npm install vega@$VEGA_VERSION vega-lite@$VEGA_LITE_VERSION vega-embed@$VEGA_EMBED_VERSION -> $prefix"
    npm install --prefix "$prefix" --no-audit --no-fund --save-exact \
        "vega@$VEGA_VERSION" "vega-lite@$VEGA_LITE_VERSION" "vega-embed@$VEGA_EMBED_VERSION" \
        || die "npm install failed (is registry.npmjs.org reachable?)"
else
    echo "build_plots_template: vega packages already installed in $prefix"
fi

# Order matters: vega-embed's UMD bundle reads the `vega` and `vegaLite` globals.
libs=(
    "$prefix/node_modules/vega/build/vega.min.js"
    "$prefix/node_modules/vega-lite/build/vega-lite.min.js"
    "$prefix/node_modules/vega-embed/build/vega-embed.min.js"
)
for lib in "${libs[@]}"; do
    [[ -f "$lib" ]] || die "expected bundle $lib is missing (package layout changed?)"
    # dvc-render fills the template with str.replace on these names, and an inline
    # script ends at the first "</script": either inside a bundle would corrupt the page.
    if grep -q -E '\{(plot_divs|scripts|refresh_tag)\}' "$lib"; then
        die "$lib contains a dvc-render placeholder; cannot inline it safely"
    fi
    if grep -q -i '</script' "$lib"; then
        die "$lib contains '</script'; cannot inline it safely"
    fi
done

tmp="$(mktemp "$outdir/.dvc-plots-template.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
{
    while IFS= read -r line || [[ -n "$line" ]]; do
        case "$line" in
            *"<!-- @VEGA_VERSIONS@ -->"*)
                echo "    <!-- vega $VEGA_VERSION, vega-lite $VEGA_LITE_VERSION, vega-embed $VEGA_EMBED_VERSION (BSD-3-Clause, from npm), inlined by scripts/build_plots_template.sh -->"
                ;;
            *"<!-- @VEGA_LIBS@ -->"*)
                for lib in "${libs[@]}"; do
                    printf '    <script type="text/javascript">\n'
                    # Drop the sourceMappingURL comment: the .map files are not shipped.
                    grep -v '^//# sourceMappingURL=' "$lib"
                    printf '\n    </script>\n'
                done
                ;;
            *) printf '%s\n' "$line" ;;
        esac
    done <"$template_in"
} >"$tmp"

grep -q '{plot_divs}' "$tmp" || die "generated template lacks the {plot_divs} placeholder"
chmod 644 "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
echo "build_plots_template: wrote $out ($(wc -c <"$out") bytes)"
