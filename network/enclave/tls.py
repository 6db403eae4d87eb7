"""TLS for the node's frontends: the node certificate, and client certificates accepted whatever their issuer.

CCF requests a client certificate and accepts any at the TLS layer; the frontends then identify the caller
by the SHA-256 of the DER certificate and answer 401 in HTTP if it is unknown. CPython's `ssl` cannot do
that (an untrusted certificate fails the handshake), so `accept_any_client_certificate` installs an OpenSSL
verify callback on the context's `SSL_CTX` through ctypes. That relies on CPython's private layout of
`SSLContext` (the `SSL_CTX*` right after the object header), so the pointer is checked first: the verify
mode OpenSSL reports through it must be the one Python set. If the check fails, `TLSSetupError` is raised
rather than guessing.

Keys reach OpenSSL without touching a file system where the platform allows: `load_identity` hands the PEM
over through an anonymous memory file (`memfd_create`), read through `/proc/self/fd`; elsewhere through a
private temporary file removed at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import ssl
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

_SSL_VERIFY_PEER = 0x01
_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
# Callbacks must outlive the contexts they are installed on: keep them with the context's id.
_callbacks: dict[int, Any] = {}


class TLSSetupError(Exception):
    """The TLS context cannot be set up as the frontends need it."""


def _libssl() -> ctypes.CDLL:
    import _ssl  # the module linked against the OpenSSL that `ssl` uses

    lib = ctypes.CDLL(_ssl.__file__)
    lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VERIFY_CALLBACK]
    lib.SSL_CTX_set_verify.restype = None
    lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
    return lib


def _ssl_ctx_pointer(context: ssl.SSLContext) -> int:
    # PySSLContext: PyObject_HEAD, then `SSL_CTX *ctx` (CPython 3.11's Modules/_ssl.c).
    header = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)
    pointer = ctypes.c_void_p.from_address(id(context) + header).value
    if not pointer:
        raise TLSSetupError("cannot locate the SSL_CTX of this SSLContext")
    return int(pointer)


def accept_any_client_certificate(context: ssl.SSLContext) -> ssl.SSLContext:
    """Request a client certificate and accept any (or none) at the TLS layer."""
    if sys.implementation.name != "cpython":
        raise TLSSetupError("accepting any client certificate needs CPython's ssl module")
    context.verify_mode = ssl.CERT_OPTIONAL  # Python sets SSL_VERIFY_PEER through its own pointer
    lib = _libssl()
    pointer = _ssl_ctx_pointer(context)
    if lib.SSL_CTX_get_verify_mode(pointer) != _SSL_VERIFY_PEER:
        raise TLSSetupError("the SSLContext layout is not the one expected; refusing to install a callback")
    callback = _VERIFY_CALLBACK(lambda preverify_ok, store: 1)
    _callbacks[id(context)] = (context, callback)
    lib.SSL_CTX_set_verify(pointer, _SSL_VERIFY_PEER, callback)
    return context


@contextlib.contextmanager
def _pem_path(text: str) -> Iterator[str]:
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("pem", 0)
        try:
            os.write(fd, text.encode())
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory() as private:
        path = os.path.join(private, "pem")
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(text)
        yield path


def load_identity(context: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """Present `cert_pem` with its key on `context`."""
    with _pem_path(cert_pem) as cert_path, _pem_path(key_pem) as key_path:
        context.load_cert_chain(cert_path, key_path)


def server_context(cert_pem: str, key_pem: str) -> ssl.SSLContext:
    """A TLS 1.2+ server context with the node's certificate that takes any client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_identity(context, cert_pem, key_pem)
    return accept_any_client_certificate(context)


def node_to_node_contexts(cert_pem: str, key_pem: str, service_pem: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts for node-to-node channels: this node's certificate, trusting only the service
    (peers are then checked by node id, not by host name)."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    for context in (server, client):
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        load_identity(context, cert_pem, key_pem)
        context.load_verify_locations(cadata=service_pem)
        context.verify_mode = ssl.CERT_REQUIRED
    return server, client


def client_context(service_pem: str, cert_pem: str | None = None, key_pem: str | None = None) -> ssl.SSLContext:
    """A client context that trusts only the service certificate (and presents a certificate if given)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # a node is known by the service that endorsed it, not by host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=service_pem)
    if cert_pem is not None and key_pem is not None:
        load_identity(context, cert_pem, key_pem)
    return context
