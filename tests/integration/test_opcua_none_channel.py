"""The None-channel regression: asyncua answers sessions and reads on a SecurityPolicy#None channel even
when no None endpoint is configured. zonegate answers only discovery there. Each test opens the None
channel by hand (Hello, OpenSecureChannel with SecurityPolicy#None) and sends one service over it."""

from __future__ import annotations

from pathlib import Path

import pytest
from asyncua import Client, ua

from tests.integration.test_opcua_server import PASSWORD, Pki, pki, rig, run, secure_client  # noqa: F401

REFUSED = ua.StatusCodes.BadSecurityModeRejected


async def none_channel(url: str) -> Client:
    """A client with an open SecurityPolicy#None secure channel and nothing else."""
    client = Client(url, timeout=5)
    await client.connect_socket()
    await client.send_hello()
    await client.open_secure_channel()
    assert client.security_policy.Mode == ua.MessageSecurityMode.None_
    return client


def test_discovery_is_answered_on_a_none_channel(tmp_path: Path, pki: Pki) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, pki) as r:
            client = await none_channel(r.url)
            try:
                endpoints = await client.get_endpoints()
                assert endpoints and all(e.SecurityMode == ua.MessageSecurityMode.SignAndEncrypt for e in endpoints)
                servers = await client.find_servers()
                assert servers[0].ApplicationUri == r.converter.settings.application_uri
            finally:
                await client.close_secure_channel()
                client.disconnect_socket()
            assert r.converter.channel_stats.refused_insecure == 0

    run(scenario())


def test_create_session_on_a_none_channel_is_refused(tmp_path: Path, pki: Pki) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, pki) as r:
            client = await none_channel(r.url)
            try:
                with pytest.raises(ua.UaStatusCodeError) as caught:
                    await client.create_session()
                assert caught.value.code == REFUSED
            finally:
                client.disconnect_socket()
            assert r.converter.channel_stats.refused_insecure == 1

    run(scenario())


def test_activate_session_with_a_user_name_on_a_none_channel_is_refused(tmp_path: Path, pki: Pki) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, pki) as r:
            # A live session made properly, whose token a None channel then tries to activate with a password.
            async with await secure_client(r.url, pki) as good:
                client = await none_channel(r.url)
                try:
                    client.uaclient.protocol.authentication_token = good.uaclient.protocol.authentication_token
                    params = ua.ActivateSessionParameters()
                    params.UserIdentityToken = ua.UserNameIdentityToken(
                        PolicyId="username", UserName="historian", Password=PASSWORD.encode()
                    )
                    with pytest.raises(ua.UaStatusCodeError) as caught:
                        await client.uaclient.activate_session(params)
                    assert caught.value.code == REFUSED
                finally:
                    client.disconnect_socket()
            assert r.converter.channel_stats.refused_insecure == 1

    run(scenario())


def test_read_on_a_none_channel_is_refused(tmp_path: Path, pki: Pki) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, pki) as r:
            async with await secure_client(r.url, pki) as good:
                client = await none_channel(r.url)
                try:
                    client.uaclient.protocol.authentication_token = good.uaclient.protocol.authentication_token
                    params = ua.ReadParameters()
                    params.NodesToRead = [ua.ReadValueId(NodeId=r.converter.node_of["Ticks"],
                                                         AttributeId=ua.AttributeIds.Value)]
                    with pytest.raises(ua.UaStatusCodeError) as caught:
                        await client.uaclient.read(params)
                    assert caught.value.code == REFUSED
                    params.NodesToRead = [ua.ReadValueId(NodeId=ua.NodeId(ua.ObjectIds.Server_ServerStatus),
                                                         AttributeId=ua.AttributeIds.Value)]
                    with pytest.raises(ua.UaStatusCodeError) as caught:
                        await client.uaclient.read(params)
                    assert caught.value.code == REFUSED
                finally:
                    client.disconnect_socket()
            assert r.converter.channel_stats.refused_insecure == 2

    run(scenario())


def test_a_whole_session_over_a_none_channel_is_refused_at_every_step(tmp_path: Path, pki: Pki) -> None:
    """The attack itself: create, activate with a valid user name and password, read, all on one None
    channel. Each step is tried whatever the previous one answered, and each is refused."""

    async def scenario() -> None:
        async with rig(tmp_path, pki) as r:
            client = await none_channel(r.url)
            codes: list[int] = []
            try:
                try:
                    await client.create_session()
                except ua.UaStatusCodeError as exc:
                    codes.append(exc.code)
                params = ua.ActivateSessionParameters()
                params.UserIdentityToken = ua.UserNameIdentityToken(
                    PolicyId="username", UserName="historian", Password=PASSWORD.encode()
                )
                try:
                    await client.uaclient.activate_session(params)
                except ua.UaStatusCodeError as exc:
                    codes.append(exc.code)
                read = ua.ReadParameters()
                read.NodesToRead = [ua.ReadValueId(NodeId=r.converter.node_of["Ticks"], AttributeId=ua.AttributeIds.Value)]
                try:
                    await client.uaclient.read(read)
                except ua.UaStatusCodeError as exc:
                    codes.append(exc.code)
            finally:
                client.disconnect_socket()
            assert codes == [REFUSED, REFUSED, REFUSED]
            assert r.converter.channel_stats.refused_insecure == 3

    run(scenario())
