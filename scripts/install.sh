#!/usr/bin/env bash
# Installs imapbak, its man pages and its shell completions under a prefix:
#   scripts/install.sh [PREFIX]        (default: ~/.local)
# PREFIX/bin/imapbak, PREFIX/share/man/man1/imapbak*.1, and completions in
# PREFIX/share/{bash-completion/completions,zsh/site-functions,fish/vendor_completions.d}.
# Set IMAPBAK_BIN to install an already built binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix="${1:-$HOME/.local}"
bin="${IMAPBAK_BIN:-}"
if [ -z "$bin" ]; then
    cargo build --release --locked
    bin="${CARGO_TARGET_DIR:-target}/release/imapbak"
fi
install -d "$prefix/bin" "$prefix/share/man/man1" \
    "$prefix/share/bash-completion/completions" \
    "$prefix/share/zsh/site-functions" \
    "$prefix/share/fish/vendor_completions.d"
install -m 0755 "$bin" "$prefix/bin/imapbak"
"$prefix/bin/imapbak" man --write-all "$prefix/share/man/man1"
"$prefix/bin/imapbak" completions bash > "$prefix/share/bash-completion/completions/imapbak"
"$prefix/bin/imapbak" completions zsh > "$prefix/share/zsh/site-functions/_imapbak"
"$prefix/bin/imapbak" completions fish > "$prefix/share/fish/vendor_completions.d/imapbak.fish"
echo "installed imapbak into $prefix (binary, man pages, bash/zsh/fish completions)"
case ":$PATH:" in
    *":$prefix/bin:"*) ;;
    *) echo "note: $prefix/bin is not on PATH; cron needs the full path: $prefix/bin/imapbak" ;;
esac
