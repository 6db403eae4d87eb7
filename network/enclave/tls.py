"""TLS for the node's frontends: the node certificate, and client certificates accepted whatever their issuer.

CCF requests a client certificate and accepts any at the TLS layer; the frontends then identify the caller
by the SHA-256 of the DER certificate and answer 401 in HTTP if it is unknown. CPython's `ssl` cannot do
that (an untrusted certificate fails the handshake), so `accept_any_client_certificate` installs an OpenSSL
verify callback on the context's `SSL_CTX` through ctypes. That relies on CPython's private layout of
`SSLContext` (the `SSL_CTX*` right after the object header), so the pointer is checked first: the verify
mode OpenSSL reports through it must be the one Python set. If the check fails, `TLSSetupError` is raised
rather than guessing.
"""

from __future__ import annotations

import ctypes
import ssl
import sys
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


def server_context(cert_path: str, key_path: str) -> ssl.SSLContext:
    """A TLS 1.2+ server context with the node's certificate that takes any client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    return accept_any_client_certificate(context)
