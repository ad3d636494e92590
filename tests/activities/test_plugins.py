"""Destination kinds from plugins: loaded from the ``courier.destinations`` entry points.

Each test builds real distributions (a ``*.dist-info`` with ``entry_points.txt`` and a module)
in a temporary directory and hands their entry points to ``registry.load_plugins``, as the
registry does with the installed ones at import. A plugin that loads is a kind like the
built-in ones; one that does not is left out with one error line, and only a config naming its
kind is refused. tests/integration/test_plugin_kind.py installs a real plugin package instead.
"""

from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import Iterator
from importlib.metadata import EntryPoint, distributions
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from activities import registry
from activities.errors import PermanentExportError, RetryableExportError
from activities.files import FileConfig
from courier.cli import app
from courier.config.model import parse_config
from courier.config.reference import render
from workflows.types import Blob, KafkaRecord, OutgoingRecord

runner = CliRunner()
EXAMPLE_SINK = Path(__file__).parents[1] / "plugins" / "courier_example_sink"

MODEL = '''
from typing import Literal

from pydantic import Field

from activities.base import DestinationConfig


class MailConfig(DestinationConfig):
    """Mail through a relay, one message per record."""

    kind: Literal["{kind}"] = Field(description="Always `{kind}`.")
    relay: str = Field(description="Host of the mail relay.")

    def create(self):
        return None
'''


@pytest.fixture
def plugins_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on ``sys.path`` for plugin distributions; the registry restored after."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    before = dict(registry.KINDS)
    yield root
    for name in [n for n in registry.KINDS if n not in before]:
        registry.unregister(name)
    registry.PLUGINS.clear()
    registry.NOT_LOADED.clear()
    assert registry.KINDS == before


def install(root: Path, dist: str, entries: dict[str, str], modules: dict[str, str]) -> list[Any]:
    """A distribution ``dist`` 1.0 in ``root`` declaring ``entries``; its entry points."""
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entries.items())
    (info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\n{lines}")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    [found] = [d for d in distributions(path=[str(root)]) if d.metadata["Name"] == dist]
    return list(found.entry_points.select(group=registry.ENTRY_POINT_GROUP))


def config_file(tmp_path: Path, *destinations: dict[str, Any]) -> str:
    path = tmp_path / f"courier-{len(list(tmp_path.iterdir()))}.yaml"
    data = {
        "kafka": {"topics": ["orders"]},
        "destinations": list(destinations),
        "routes": {"default": destinations[0]["name"]},
    }
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_a_plugin_kind_is_a_kind_like_the_built_in_ones(
    plugins_dir: Path, tmp_path: Path, unique: str
) -> None:
    reference_without = render()
    module = f"mail_{unique}"
    entries = install(
        plugins_dir,
        "courier-mail",
        {"mail": f"{module}:MailConfig"},
        {module: MODEL.format(kind="mail")},
    )

    registry.load_plugins(entries)

    built_in = [kind for kind in registry.KINDS if kind in registry.BUILT_IN]
    assert list(registry.KINDS) == [*built_in, "mail"]
    assert registry.PLUGINS["mail"] == registry.Plugin(
        "mail", f"mail = {module}:MailConfig", "courier-mail 1.0"
    )
    assert registry.NOT_LOADED == {}
    config = parse_config(
        {
            "kafka": {"topics": ["orders"]},
            "destinations": [{"name": "m", "kind": "mail", "relay": "smtp.test"}],
            "routes": {"default": "m"},
        },
        environ={},
    )
    assert type(config.destinations[0]).__name__ == "MailConfig"
    check = runner.invoke(app, ["config", "check", "-c", config_file(tmp_path, _mail())])
    assert check.exit_code == 0, check.output
    reference = runner.invoke(app, ["config", "reference"]).stdout
    assert "## destinations[] with kind: mail" in reference
    assert f"From the plugin courier-mail 1.0 (entry point `mail = {module}:MailConfig`)." in (
        reference
    )
    assert "| `relay` | str | required | Host of the mail relay. |" in reference
    # The committed reference (docs/config-reference.md) is that of Courier's own kinds.
    assert render(plugins=False) == reference_without


def test_an_unknown_kind_lists_the_plugin_kinds_and_their_packages(
    plugins_dir: Path, tmp_path: Path, unique: str
) -> None:
    module = f"mail_{unique}"
    registry.load_plugins(
        install(
            plugins_dir,
            "courier-mail",
            {"mail": f"{module}:MailConfig"},
            {module: MODEL.format(kind="mail")},
        )
    )

    result = runner.invoke(
        app, ["config", "check", "-c", config_file(tmp_path, {"name": "m", "kind": "smtp"})]
    )

    assert result.exit_code == 2
    built_in = ", ".join(repr(kind) for kind in registry.KINDS if kind in registry.BUILT_IN)
    assert (
        "destinations[0].kind (line 2, column 3): unknown destination kind 'smtp'; known: "
        f"{built_in}, 'mail' (plugin courier-mail 1.0);"
    ) in result.output


def _mail(kind: str = "mail") -> dict[str, Any]:
    return {"name": "m", "kind": kind, "relay": "smtp.test"}


BROKEN: dict[str, tuple[str, str, str]] = {
    # case: (entry point value, module source, words in the message)
    "import fails": (
        "{module}:MailConfig",
        "import boto3_not_installed_anywhere\n",
        "failed to load (ModuleNotFoundError: No module named 'boto3_not_installed_anywhere'); "
        "install its dependencies, or uninstall it",
    ),
    "no such attribute": (
        "{module}:MailConfg",
        MODEL.format(kind="mail"),
        "failed to load (AttributeError: module '{module}' has no attribute 'MailConfg');",
    ),
    "not a config model": (
        "{module}:make",
        "def make():\n    return None\n",
        "is not a valid destination kind: <function make at",
    ),
    "another kind's name": (
        "{module}:MailConfig",
        MODEL.format(kind="smtp"),
        "is not a valid destination kind: its kind is 'smtp' but the entry point is named "
        "'mail'; name them alike; fix the plugin (docs/plugins.md) or uninstall it",
    ),
    "no create()": (
        "{module}:MailConfig",
        MODEL.format(kind="mail").replace("def create(self):\n        return None\n", ""),
        "is not a valid destination kind: MailConfig does not define create()",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_plugin_that_cannot_load_is_left_out_and_refuses_only_configs_naming_it(
    case: str,
    plugins_dir: Path,
    tmp_path: Path,
    unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    module = f"mail_{unique}"
    value, source, words = (part.replace("{module}", module) for part in BROKEN[case])
    entries = install(plugins_dir, "courier-mail", {"mail": value}, {module: source})

    with caplog.at_level(logging.ERROR, logger=registry.__name__):
        registry.load_plugins(entries)

    assert "mail" not in registry.KINDS and registry.PLUGINS == {}
    problem = registry.NOT_LOADED["mail"]
    assert problem.startswith(
        f"destination plugin 'mail = {value}' (entry point of courier-mail 1.0) "
    )
    assert words in problem
    assert "\n" not in problem
    assert [r.getMessage() for r in caplog.records] == [problem]
    refused = runner.invoke(app, ["config", "check", "-c", config_file(tmp_path, _mail())])
    assert refused.exit_code == 2
    assert f"destinations[0] (line 2, column 3): {problem}" in refused.output
    fine = {"name": "out", "kind": "file", "path": str(tmp_path / "out.jsonl")}
    accepted = runner.invoke(app, ["config", "check", "-c", config_file(tmp_path, fine)])
    assert accepted.exit_code == 0, accepted.output


def test_a_plugin_claiming_a_built_in_kind_is_refused_and_so_is_that_kind(
    plugins_dir: Path, tmp_path: Path, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    module = f"file_{unique}"
    entries = install(
        plugins_dir,
        "courier-better-file",
        {"file": f"{module}:MailConfig"},
        {module: MODEL.format(kind="file")},
    )

    with caplog.at_level(logging.ERROR, logger=registry.__name__):
        registry.load_plugins(entries)

    assert registry.KINDS["file"] is FileConfig and registry.PLUGINS == {}
    problem = (
        f"destination kind 'file' is built in, and declared by 'file = {module}:MailConfig' "
        "(entry point of courier-better-file 1.0); uninstall the plugin you do not use, or "
        "have it give its kind another name"
    )
    assert [r.getMessage() for r in caplog.records] == [problem]
    file_dest = {"name": "out", "kind": "file", "path": str(tmp_path / "out.jsonl")}
    refused = runner.invoke(app, ["config", "check", "-c", config_file(tmp_path, file_dest)])
    assert refused.exit_code == 2
    assert problem in refused.output
    rest = {"name": "api", "kind": "rest", "url": "http://api.test/{key}"}
    assert runner.invoke(app, ["config", "check", "-c", config_file(tmp_path, rest)]).exit_code == 0


def test_two_plugins_claiming_one_kind_are_both_left_out(plugins_dir: Path, unique: str) -> None:
    one, two = f"mail_a_{unique}", f"mail_b_{unique}"
    source = MODEL.format(kind="mail")
    entries = [
        *install(plugins_dir, "courier-mail", {"mail": f"{one}:MailConfig"}, {one: source}),
        *install(plugins_dir, "courier-mail-too", {"mail": f"{two}:MailConfig"}, {two: source}),
    ]

    registry.load_plugins(entries)

    assert "mail" not in registry.KINDS
    assert registry.NOT_LOADED["mail"] == (
        f"destination kind 'mail' is claimed by more than one plugin, and declared by "
        f"'mail = {one}:MailConfig' (entry point of courier-mail 1.0) and "
        f"'mail = {two}:MailConfig' (entry point of courier-mail-too 1.0); uninstall the "
        "plugin you do not use, or have it give its kind another name"
    )


def test_the_installed_entry_points_are_read_from_the_group(
    plugins_dir: Path, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"mail_{unique}"
    entries = install(
        plugins_dir,
        "courier-mail",
        {"mail": f"{module}:MailConfig"},
        {module: MODEL.format(kind="mail")},
    )
    asked: list[str] = []

    def entry_points(*, group: str) -> list[EntryPoint]:
        asked.append(group)
        return entries

    monkeypatch.setattr(registry, "entry_points", entry_points)
    registry.load_plugins()

    assert asked == ["courier.destinations"]
    assert "mail" in registry.PLUGINS


# ------------------------------------------------------------- the example plugin's kind
def outgoing(offset: int, value: str) -> OutgoingRecord:
    record = KafkaRecord(
        topic="orders",
        partition=0,
        offset=offset,
        timestamp_ms=1_700_000_000_000,
        key=Blob(f"k-{offset}"),
        value=Blob(value),
        headers=[],
        topic_id="T0",
    )
    return OutgoingRecord(idempotency_key=f"courier/g/orders@T0/0/{offset}", record=record)


async def test_the_example_sink_writes_each_record_once_and_says_retry_or_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE_SINK))
    from courier_example_sink import JsonFilesConfig, file_name

    out = tmp_path / "out"
    config = JsonFilesConfig(name="files", kind="json-files", directory=out, max_bytes=400)
    sink = config.create()

    await sink.open()
    assert await sink.write([outgoing(0, '{"n": 0}'), outgoing(1, "one")]) == "2 files written"
    assert await sink.write([outgoing(0, '{"n": 0}')]) == "1 file written"  # a retry
    with pytest.raises(
        PermanentExportError, match=r"orders/0/2 needs \d+ bytes, over max_bytes 400"
    ) as big:
        await sink.write([outgoing(2, "x" * 300)])
    assert big.value.reached is False
    (out / file_name(outgoing(3, "").idempotency_key)).mkdir()  # a file it cannot replace
    with pytest.raises(RetryableExportError, match=f"cannot write to {out}") as down:
        await sink.write([outgoing(4, "four"), outgoing(3, "three")])
    assert down.value.cause == "unavailable"
    assert down.value.confirmed == {outgoing(4, "").idempotency_key}
    await sink.close()

    files = {p.name: json.loads(p.read_text()) for p in out.iterdir() if p.is_file()}
    assert sorted(f["offset"] for f in files.values()) == [0, 1, 4]
    first = files[file_name(outgoing(0, "").idempotency_key)]
    assert first["value"] == {"n": 0} and first["value_encoding"] == "json"
    assert first["idempotency_key"] == "courier/g/orders@T0/0/0"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
