"""The config reference is walked from the config models: every model has its section."""

from __future__ import annotations

from courier.config.reference import anchor, render, sections, title


def test_every_model_in_the_config_has_a_section() -> None:
    headings = {title(section) for section in sections()}

    assert {
        "Top level",
        "workers",
        "kubernetes",
        "kubernetes.destination_defaults",
        "temporal.encryption",
        "temporal.encryption.keys[]",
        "destinations[] with kind: rest",
        "destinations[].rate_control",
        "destinations[].body (kind: rest)",
        "destinations[].columns.NAME (kind: postgres)",
    } <= headings


def test_every_link_points_at_a_section() -> None:
    text = render()
    headings = {anchor(line[3:]) for line in text.splitlines() if line.startswith("## ")}
    links = {link.partition(")")[0] for link in text.split("](#")[1:]}

    assert links and links <= headings, f"missing sections: {sorted(links - headings)}"
    for line in text.splitlines():
        if "| see section |" in line:
            assert "](#" in line.split("|")[2], f"a row names no section: {line}"


def test_a_model_used_in_several_places_is_described_once() -> None:
    [resources] = [s for s in sections() if s.model.__name__ == "Resources"]

    assert resources.paths == [
        "kubernetes.ingest.resources",
        "kubernetes.workflow_worker.resources",
        "kubernetes.destination_defaults.resources",
        "kubernetes.destinations.NAME.resources",
    ]
    assert "Also at `kubernetes.workflow_worker.resources`" in render()


def test_anchors_are_those_of_the_rendered_headings() -> None:
    assert anchor("destinations[] with kind: rest") == "destinations-with-kind-rest"
    assert anchor("destinations[].rate_control") == "destinationsrate_control"
    assert anchor("Top level") == "top-level"
