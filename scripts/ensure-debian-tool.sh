# Sourced by scripts/ensure-*.sh: `ensure_debian_tool SCRIPT COMMAND PACKAGE VARIABLE` prints the path of
# COMMAND: $VARIABLE if set, else COMMAND on PATH, else Debian's PACKAGE installed with apt-get (as root, or
# through passwordless sudo; nothing is downloaded from anywhere else). Exits non-zero, saying why (as
# SCRIPT), when it can neither find nor install it.
ensure_debian_tool() {
    local script="$1" command="$2" package="$3" variable="$4"
    local chosen="${!variable:-}"
    if [[ -n "$chosen" ]]; then
        if [[ ! -x "$chosen" ]]; then
            echo "$script: $variable=$chosen is not an executable file" >&2
            exit 1
        fi
        echo "$chosen"
        exit 0
    fi
    if command -v "$command" >/dev/null 2>&1; then
        command -v "$command"
        exit 0
    fi

    if ! command -v apt-get >/dev/null 2>&1; then
        echo "$script: $command is not installed and this is not a Debian-like system (no apt-get);" \
            "install it and set $variable to it" >&2
        exit 1
    fi
    local as_root
    if [[ "$(id -u)" -eq 0 ]]; then
        as_root=(env)
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        as_root=(sudo -n env)
    else
        echo "$script: $command is not installed and this user cannot install it;" \
            "run: sudo apt-get install $package" >&2
        exit 1
    fi

    echo "$script: installing Debian's $package with apt-get (once)" >&2
    # Another install on the machine may hold the dpkg lock for a while: wait for it rather than fail.
    local apt=("${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -q)
    if ! "${apt[@]}" update >&2 || ! "${apt[@]}" install -y --no-install-recommends "$package" >&2; then
        echo "$script: apt-get could not install $package (see above)" >&2
        exit 1
    fi
    if ! command -v "$command" >/dev/null 2>&1; then
        echo "$script: apt-get installed $package but there is no $command on PATH" >&2
        exit 1
    fi
    command -v "$command"
}
