"""tritonserver's restricted-API keys without putting them on its command line.

tritonserver 2.51 takes those keys only as flags (``--http-restricted-api=<apis>:<header>=<key>``,
``--grpc-restricted-protocol=...``): there is no config file and no environment variable for them
(``tritonserver --help``), and a process's arguments are readable by every local user
(``/proc/<pid>/cmdline``, ``ps``). So the launcher writes a marker in the flag instead of the key
(``...=@veil-env:VEIL_TRITON_GATEWAY_KEY``), passes the key in tritonserver's environment (readable
by its own user and root only), and preloads a tiny library of ours whose constructor runs before
``main``: it swaps each marked argument for a copy with the key, wipes the key from the original
environment block, and unsets it (and ``LD_PRELOAD``), so the python stubs Triton starts inherit
neither. ``/proc/<pid>/cmdline`` keeps showing the marker. A missing variable ends tritonserver
with exit code 78 before it parses anything: the marker itself never becomes a key.

The library is compiled from :data:`SHIM_SOURCE` with the system C compiler on first use (about a
second) into ``build/triton-runtime/``. Without a compiler the keys go on the command line as
before, with a warning (install gcc to keep them off).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

MARK = "@veil-env:"
_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")

SHIM_SOURCE = r"""
/* Veil: replace "@veil-env:NAME" in argv by $NAME before main() runs; wipe and unset NAME. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;
static const char MARK[] = "@veil-env:";

static void wipe(const char *name) {
    size_t n = strlen(name);
    for (char **e = environ; e && *e; e++) {
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=') {
            memset(*e + n + 1, 0, strlen(*e + n + 1));
        }
    }
    unsetenv(name);
}

__attribute__((constructor)) static void veil_argv_secrets(int argc, char **argv, char **envp) {
    (void)envp;
    const char *names[64];
    int used = 0;
    for (int i = 1; i < argc; i++) {
        char *at = strstr(argv[i], MARK);
        if (at == NULL) continue;
        const char *name = at + sizeof(MARK) - 1;
        const char *value = getenv(name);
        if (value == NULL || *value == '\0') {
            fprintf(stderr, "veil: argument %d names $%s, which is not set; not starting\n", i, name);
            _exit(78);
        }
        size_t prefix = (size_t)(at - argv[i]);
        char *out = malloc(prefix + strlen(value) + 1);
        if (out == NULL) _exit(71);
        memcpy(out, argv[i], prefix);
        strcpy(out + prefix, value);
        argv[i] = out;
        if (used < 64) names[used++] = name;
    }
    for (int k = 0; k < used; k++) wipe(names[k]);
    unsetenv("LD_PRELOAD");
}
"""


def env_ref(name: str) -> str:
    """The marker that stands for ``$name`` in an argument."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"environment variable name {name!r} must match {_NAME.pattern}")
    return MARK + name


def build_shim(dest: Path) -> Path | None:
    """The compiled preload library (built once per source version), or None without a C compiler."""
    tag = hashlib.sha256(SHIM_SOURCE.encode()).hexdigest()[:12]
    lib = dest / f"libveil_argv_secrets-{tag}.so"
    if lib.is_file():
        return lib
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        source, out = Path(tmp) / "shim.c", Path(tmp) / lib.name
        source.write_text(SHIM_SOURCE)
        done = subprocess.run(
            [compiler, "-shared", "-fPIC", "-O2", "-o", str(out), str(source)], capture_output=True, text=True
        )
        if done.returncode != 0:
            print(f"WARNING: compiling the argv-secrets shim failed:\n{done.stderr}", file=sys.stderr, flush=True)
            return None
        os.replace(out, lib)  # atomic: concurrent launchers never load half a file
    return lib


def expand(args: Sequence[str], secrets: Mapping[str, str]) -> list[str]:
    """``args`` with every marker replaced by its value (the fallback that puts keys on argv)."""
    out = []
    for arg in args:
        at = arg.find(MARK)
        out.append(arg if at < 0 else arg[:at] + secrets[arg[at + len(MARK) :]])
    return out


def prepare(args: Sequence[str], env: dict[str, str], secrets: Mapping[str, str], dest: Path) -> list[str]:
    """Arrange for ``secrets`` to reach the marked ``args`` of the process about to start with
    ``env`` (changed in place); returns the arguments to start it with."""
    if not secrets:
        return list(args)
    shim = build_shim(dest)
    if shim is None:
        print(
            "WARNING: no C compiler (cc/gcc): tritonserver's internal keys go on its command line, readable by"
            " every local user through the process list; install gcc to keep them off",
            file=sys.stderr,
            flush=True,
        )
        return expand(args, secrets)
    env.update(secrets)
    env["LD_PRELOAD"] = str(shim)
    return list(args)
