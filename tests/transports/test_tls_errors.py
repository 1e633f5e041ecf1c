"""A TLS failure names its cause on both shipped transports: unknown CA, expired certificate,
wrong host name, a client certificate missing, plain text against TLS and TLS against plain text."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
import trustme

from easyremote_core import (
    Address,
    Connection,
    GatewayUnavailableError,
    LinkOptions,
    TLSConfig,
    get_plugin_manager,
)
from easyremote_core._tls import CLIENT_CERT, EXPIRED, PLAIN_TO_TLS, TLS_TO_PLAIN, UNKNOWN_CA, WRONG_HOST

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

LOCAL = "127.0.0.1"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", autouse=True)
async def _one_event_loop() -> AsyncIterator[None]:
    """One event loop for the module: grpc.aio completes late operations on the loop that started them."""
    yield


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory: Path = tmp_path_factory.mktemp("tls-errors")
    ca, stranger = trustme.CA(), trustme.CA()
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    certs = {"good": ca.issue_cert(LOCAL, "localhost"),
             "expired": ca.issue_cert(LOCAL, "localhost", not_before=past, not_after=past + datetime.timedelta(days=1)),
             "client": ca.issue_cert("node-1.example")}
    paths = {"ca": directory / "ca.pem", "stranger": directory / "stranger.pem"}
    ca.cert_pem.write_to_path(paths["ca"])
    stranger.cert_pem.write_to_path(paths["stranger"])
    for name, cert in certs.items():
        paths[f"{name}.key"] = directory / f"{name}.key"
        paths[f"{name}.pem"] = directory / f"{name}.pem"
        cert.private_key_pem.write_to_path(paths[f"{name}.key"])
        cert.cert_chain_pems[0].write_to_path(paths[f"{name}.pem"])
    return {name: str(path) for name, path in paths.items()}


async def refusal(transport_name: str, server: TLSConfig | None, client: TLSConfig | None) -> str:
    """What connecting with ``client`` TLS settings to a listener with ``server`` TLS raises."""
    transport = get_plugin_manager().transport(transport_name)
    listener = await transport.listen(LOCAL, 0, LinkOptions(tls=server))

    async def hold(connection: Connection) -> None:
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, hold)
        try:
            with anyio.fail_after(15), pytest.raises(GatewayUnavailableError) as caught:
                dialler = get_plugin_manager().transport(transport_name)
                await dialler.connect(Address(LOCAL, listener.port), LinkOptions(tls=client, connect_timeout=10))
        finally:
            await listener.aclose()
            tg.cancel_scope.cancel()
    return str(caught.value)


@pytest.mark.parametrize("transport_name", ["grpc", "tcp"])
@pytest.mark.parametrize("case", ["unknown CA", "expired", "wrong host", "plain to TLS", "TLS to plain"])
async def test_a_tls_failure_names_its_cause(pki: dict[str, str], transport_name: str, case: str) -> None:
    served = TLSConfig(cert=pki["good.pem"], key=pki["good.key"])
    server, client, cause = {
        "unknown CA": (served, TLSConfig(ca=pki["stranger"]), UNKNOWN_CA),
        "expired": (TLSConfig(cert=pki["expired.pem"], key=pki["expired.key"]), TLSConfig(ca=pki["ca"]), EXPIRED),
        "wrong host": (served, TLSConfig(ca=pki["ca"], server_hostname="wrong.example"), WRONG_HOST),
        "plain to TLS": (served, None, PLAIN_TO_TLS),
        "TLS to plain": (None, TLSConfig(ca=pki["ca"]), TLS_TO_PLAIN),
    }[case]
    message = await refusal(transport_name, server, client)
    assert cause in message, message
    assert "TSI_PROTOCOL_FAILURE" not in message.split("(")[0]  # the cause comes first, gRPC's words after


@pytest.mark.parametrize("transport_name", ["grpc", "tcp"])
async def test_a_missing_client_certificate_is_named(pki: dict[str, str], transport_name: str) -> None:
    server = TLSConfig(cert=pki["good.pem"], key=pki["good.key"], ca=pki["ca"], require_client_cert=True)
    message = await refusal(transport_name, server, TLSConfig(ca=pki["ca"]))
    assert CLIENT_CERT in message, message
