"""A bind() shim preloaded into Pod processes: a wildcard bind (0.0.0.0, ::) becomes a bind to the Pod's own IP.

All Pods share the host's network, so two management servers whose config files say `address: 0.0.0.0` and port
5723 would collide. Argument rewriting covers addresses on the command line; this covers the ones read from files
or built into programs (Python, gRPC and PostgreSQL all bind through libc). The shim reads `POD_IP` at each call
and leaves every other address alone. It is compiled with the system C compiler on first use; without one the
runtime warns and runs Pods without it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("opsmgr.dev.runtime")

SOURCE = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static bind_fn real_bind;
    if (!real_bind) real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
    const char *ip = getenv("POD_IP");
    struct in_addr pod;
    if (ip == NULL || addr == NULL || inet_pton(AF_INET, ip, &pod) != 1) return real_bind(fd, addr, len);
    if (addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in copy;
        memcpy(&copy, addr, sizeof copy);
        if (copy.sin_addr.s_addr != htonl(INADDR_ANY)) return real_bind(fd, addr, len);
        copy.sin_addr = pod;
        return real_bind(fd, (const struct sockaddr *)&copy, sizeof copy);
    }
    if (addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 copy;
        memcpy(&copy, addr, sizeof copy);
        if (!IN6_IS_ADDR_UNSPECIFIED(&copy.sin6_addr)) return real_bind(fd, addr, len);
        /* [::] on a dual-stack socket becomes the IPv4-mapped pod IP */
        int off = 0;
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
        memset(&copy.sin6_addr, 0, sizeof copy.sin6_addr);
        copy.sin6_addr.s6_addr[10] = 0xff;
        copy.sin6_addr.s6_addr[11] = 0xff;
        memcpy(&copy.sin6_addr.s6_addr[12], &pod, 4);
        return real_bind(fd, (const struct sockaddr *)&copy, sizeof copy);
    }
    return real_bind(fd, addr, len);
}
"""


def _prepare(directory: Path) -> tuple[Path, Path]:
    """(library, source) paths, the source written out under a name of this process, as runtimes may build at once.

    Small local files, not worth a thread.
    """
    digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:16]
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / f"bindshim-{digest}.{os.getpid()}.c"
    source.write_text(SOURCE)
    return directory / f"bindshim-{digest}.so", source


async def build_bind_shim(directory: Path) -> Path | None:
    """The shared library, compiled into `directory` once per source version; None without a C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        log.warning("no C compiler (cc): Pods run without the bind shim, so a program that binds 0.0.0.0 from "
                    "a config file takes the port on every address; `apt-get install gcc` adds one")
        return None
    library, source = _prepare(directory)
    if _exists(library):
        os.unlink(source)
        return library
    partial = library.with_suffix(f".so.{os.getpid()}")
    process = await asyncio.create_subprocess_exec(
        compiler, "-shared", "-fPIC", "-O2", "-o", str(partial), str(source), "-ldl",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await process.communicate()
    if process.returncode != 0:
        log.warning("building the bind shim failed (%s); Pods run without it:\n%s", compiler,
                    output.decode(errors="replace")[-2000:])
        return None
    os.replace(partial, library)  # atomic: a concurrent runtime sees the whole library or none
    os.unlink(source)
    return library


def _exists(path: Path) -> bool:
    return path.exists()
