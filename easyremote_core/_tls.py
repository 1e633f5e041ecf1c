"""TLS failures in words: what OpenSSL and gRPC report, said as its cause and what to change."""

from __future__ import annotations

import ssl

import anyio
from anyio.streams.tls import TLSStream

UNKNOWN_CA = ("the gateway's certificate is signed by a CA this peer does not trust (unknown CA); "
              "give TLSConfig(ca=...) the CA that signed it")
EXPIRED = "the gateway's certificate has expired"
NOT_YET_VALID = "the gateway's certificate is not valid yet (are the clocks right?)"
WRONG_HOST = ("the gateway's certificate is not issued for the name this peer dialled (wrong host name); "
              "dial a name it is issued for, or set TLSConfig(server_hostname=...)")
TLS_TO_PLAIN = ("TLS against plain text: the gateway does not speak TLS on this port; "
                "drop tls=, or start the gateway with a certificate")
PLAIN_TO_TLS = ("plain text against TLS: the gateway speaks TLS on this port; connect with "
                "tls=TLSConfig(ca=...)")
CLIENT_CERT = ("the gateway requires a client certificate this peer did not give (or one it does not trust); "
               "give TLSConfig(cert=..., key=...)")

# What OpenSSL, BoringSSL (in gRPC) and gRPC's own checks say, lower-cased, for each cause.
_CAUSES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("certificate has expired", "certificate_expired", "certificate expired"), EXPIRED),
    (("certificate is not yet valid", "certificate_not_yet_valid"), NOT_YET_VALID),
    (("hostname mismatch", "hostname verification check failed", "no match found for server name",
      "ip address mismatch"), WRONG_HOST),
    (("unable to get local issuer certificate", "self signed certificate", "self-signed certificate",
      "unable to verify the first certificate", "unknown ca", "unknown_ca"), UNKNOWN_CA),
    (("certificate required", "certificate_required", "peer did not return a certificate",
      "bad certificate", "bad_certificate"), CLIENT_CERT),
    (("wrong version number", "wrong_version_number", "http request", "packet length too long",
      "record layer failure", "unknown protocol"), TLS_TO_PLAIN),
)


def explain(report: str) -> str | None:
    """The cause of a TLS failure from its report, or ``None`` when the report names none."""
    text = report.lower()
    for phrases, cause in _CAUSES:
        if any(phrase in text for phrase in phrases):
            return cause
    return None


def explain_error(exc: BaseException) -> str | None:
    """The cause of a TLS failure from an exception (``ssl`` errors carry the verifier's words)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
            found = explain(exc.verify_message)
            if found:
                return found
        if isinstance(exc, ssl.SSLError):
            found = explain(f"{exc.reason or ''} {exc}")
            if found:
                return found
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


async def speaks_tls(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether ``host:port`` completes a TLS handshake (its certificate unchecked).

    Asked only after a plain-text link failed, to tell a gateway that expects TLS from one
    that closed the link for another reason.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "easyremote"])
    try:
        with anyio.fail_after(timeout):
            stream = await anyio.connect_tcp(host, port)
            try:
                await TLSStream.wrap(stream, hostname=host, ssl_context=context, standard_compatible=False)
            finally:
                await anyio.aclose_forcefully(stream)
    except (OSError, TimeoutError, ssl.SSLError, anyio.BrokenResourceError, anyio.EndOfStream):
        return False
    return True
