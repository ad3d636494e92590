"""The AES-256-GCM payload codec, its keys and the codec server's HTTP protocol."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from typer.testing import CliRunner

from courier.cli import app
from courier.config.model import ConfigError, parse_config
from courier.core.codec import ENCODING, KEY_ID, AesGcmCodec, DecryptError, data_converter
from courier.core.encryption import EncryptionConfig, EncryptionKeyError
from courier.ops.codec_server import build_app

K1, K2 = os.urandom(32), os.urandom(32)
UI = "http://127.0.0.1:8233"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def plain(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(text).encode())


async def test_payloads_are_sealed_with_the_current_key_and_open_again() -> None:
    codec = AesGcmCodec({"k1": K1}, "k1")
    [sealed] = await codec.encode([plain("card 4111-1111")])
    assert sealed.metadata["encoding"] == ENCODING and sealed.metadata[KEY_ID] == b"k1"
    assert b"4111" not in sealed.SerializeToString()
    [opened] = await codec.decode([sealed])
    assert opened == plain("card 4111-1111")
    [again] = await codec.encode([plain("card 4111-1111")])
    assert again.data != sealed.data, "a fresh nonce every time"


async def test_a_rotated_key_still_opens_what_the_old_one_sealed() -> None:
    old = AesGcmCodec({"k1": K1}, "k1")
    [sealed] = await old.encode([plain("x")])
    rotated = AesGcmCodec({"k1": K1, "k2": K2}, "k2")
    assert (await rotated.decode([sealed])) == [plain("x")]
    [new] = await rotated.encode([plain("y")])
    assert new.metadata[KEY_ID] == b"k2"
    with pytest.raises(DecryptError, match="key 'k2', which is not among"):
        await old.decode([new])


async def test_wrong_material_or_tampering_is_a_clear_error() -> None:
    [sealed] = await AesGcmCodec({"k1": K1}, "k1").encode([plain("x")])
    with pytest.raises(DecryptError, match="does not decrypt with key 'k1'"):
        await AesGcmCodec({"k1": K2}, "k1").decode([sealed])
    tampered = Payload()
    tampered.CopyFrom(sealed)
    tampered.metadata[KEY_ID] = b"k2"  # the key ID is bound in: relabelling is detected
    with pytest.raises(DecryptError):
        await AesGcmCodec({"k1": K1, "k2": K1}, "k1").decode([tampered])


async def test_plain_payloads_pass_through_decode() -> None:
    assert await AesGcmCodec({"k1": K1}, "k1").decode([plain("old")]) == [plain("old")]


def test_keys_from_env_and_file(tmp_path: Path) -> None:
    raw = tmp_path / "raw.key"
    raw.write_bytes(K1)
    text = tmp_path / "b64.key"
    text.write_text(b64(K2) + "\n")
    cfg = parse_config(
        {
            "kafka": {"topics": ["t"]},
            "temporal": {
                "encryption": {
                    "current_key": "k3",
                    "keys": [
                        {"id": "k1", "file": str(raw)},
                        {"id": "k2", "file": str(text)},
                        {"id": "k3", "key": "${KEY3}"},
                    ],
                }
            },
            "destinations": [{"name": "f", "kind": "file", "path": "x"}],
            "routes": {"default": "f"},
        },
        environ={"KEY3": b64(K1)},
    )
    assert cfg.temporal.encryption is not None
    assert cfg.temporal.encryption.materials() == {"k1": K1, "k2": K2, "k3": K1}
    assert data_converter(cfg.temporal.encryption).payload_codec is not None
    assert data_converter(None).payload_codec is None


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"current_key": "k9", "keys": [{"id": "k1", "key": "x"}]}, "current_key 'k9' is not"),
        ({"current_key": "k1", "keys": [{"id": "k1"}]}, "exactly one of `key` or `file`"),
        (
            {"current_key": "k1", "keys": [{"id": "k1", "key": "a"}, {"id": "k1", "key": "b"}]},
            "repeated: k1",
        ),
    ],
)
def test_bad_sections_name_the_problem(section: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_config(
            {
                "kafka": {"topics": ["t"]},
                "temporal": {"encryption": section},
                "destinations": [{"name": "f", "kind": "file", "path": "x"}],
            },
            environ={},
        )


def test_bad_key_material_is_one_line(tmp_path: Path) -> None:
    short = EncryptionConfig.model_validate(
        {"current_key": "k1", "keys": [{"id": "k1", "key": b64(b"short")}]}
    )
    with pytest.raises(EncryptionKeyError, match="'k1' is not base64 of 32 bytes"):
        short.materials()
    missing = EncryptionConfig.model_validate(
        {"current_key": "k1", "keys": [{"id": "k1", "file": str(tmp_path / "nope")}]}
    )
    with pytest.raises(EncryptionKeyError, match="cannot read"):
        missing.materials()
    config = tmp_path / "c.yaml"
    key_file = tmp_path / "nope"
    config.write_text(
        "kafka: {topics: [t]}\n"
        f"temporal: {{encryption: {{current_key: k1, keys: [{{id: k1, file: {key_file}}}]}}}}\n"
        "destinations: [{name: f, kind: file, path: x}]\nroutes: {default: f}\n"
    )
    result = CliRunner().invoke(app, ["codec-server", "-c", str(config)])
    assert result.exit_code == 2 and "cannot read" in result.output


async def client_for(codec: AesGcmCodec) -> TestClient:
    client = TestClient(TestServer(build_app(codec, namespace="default", origins=[UI])))
    await client.start_server()
    return client


def body(payloads: list[Payload]) -> str:
    return json_format.MessageToJson(Payloads(payloads=payloads))


async def test_codec_server_decodes_and_encodes_for_the_ui() -> None:
    codec = AesGcmCodec({"k1": K1}, "k1")
    [sealed] = await codec.encode([plain("secret order")])
    client = await client_for(codec)
    try:
        headers = {"Origin": UI, "X-Namespace": "default", "Content-Type": "application/json"}
        answer = await client.post("/api/decode", data=body([sealed]), headers=headers)
        assert answer.status == 200
        assert answer.headers["Access-Control-Allow-Origin"] == UI
        decoded = json_format.Parse(await answer.text(), Payloads())
        assert list(decoded.payloads) == [plain("secret order")]
        answer = await client.post("/encode", data=body([plain("z")]), headers=headers)
        [encoded] = json_format.Parse(await answer.text(), Payloads()).payloads
        assert encoded.metadata[KEY_ID] == b"k1"
        assert await codec.decode([encoded]) == [plain("z")]
    finally:
        await client.close()


async def test_codec_server_cors_and_errors() -> None:
    codec = AesGcmCodec({"k1": K1}, "k1")
    client = await client_for(codec)
    try:
        preflight = await client.options(
            "/decode",
            headers={"Origin": UI, "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status == 200
        assert preflight.headers["Access-Control-Allow-Origin"] == UI
        assert "x-namespace" in preflight.headers["Access-Control-Allow-Headers"]
        other = await client.options("/decode", headers={"Origin": "http://evil.example"})
        assert other.status == 403 and "Access-Control-Allow-Origin" not in other.headers
        cross = await client.post("/decode", data="{}", headers={"Origin": "http://evil.example"})
        assert cross.status == 403
        assert (await client.post("/decode", data="not json")).status == 400
        wrong_ns = await client.post("/decode", data="{}", headers={"X-Namespace": "prod"})
        assert wrong_ns.status == 400 and "serves namespace 'default'" in await wrong_ns.text()
        [sealed] = await AesGcmCodec({"k0": K2}, "k0").encode([plain("x")])
        unknown = await client.post("/decode", data=body([sealed]))
        assert unknown.status == 400 and "key 'k0'" in await unknown.text()
    finally:
        await client.close()
