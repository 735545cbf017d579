import json
from pathlib import Path

import pytest

from middo.dataio import read_dataset
from middo.errors import MiddoError
from middo.ingest import import_dataset
from middo.provenance import PACKAGES

ROOT = Path(__file__).resolve().parents[1]


def _import(source, out_dir, metrics, limit=0):
    return import_dataset(source, out_dir, metrics, fmt="auto", split="train", limit=limit)


def test_seed_imports_cleanly_with_counts(tmp_path):
    counts = _import(ROOT / "data/seed/seed.jsonl", tmp_path / "round_0", tmp_path / "import.json")
    lines = (ROOT / "data/seed/seed.jsonl").read_text(encoding="utf-8").splitlines()
    assert counts["total"] == len(lines)
    assert counts["kept"] + counts["rejected"] + counts["blank"] + counts["over_limit"] == counts["total"]
    out = read_dataset(tmp_path / "round_0" / "train.jsonl").records
    assert len(out) == counts["kept"]
    assert {r.meta.get("category") for r in out} >= {"normal", "hard", "sloppy", "near_duplicate", "rare"}
    assert all(r.round == 0 and r.op == "seed" for r in out)
    saved = json.loads((tmp_path / "import.json").read_text())
    assert saved == {"import": counts}
    # provenance beside the metrics: versions only (no model runs here), the same on every run of this environment
    env = json.loads((tmp_path / "env" / "import.json").read_text())
    assert set(env) == {"python", *PACKAGES, "device", "dtype", "cpu"}
    assert env["device"] == env["dtype"] == "n/a"


def test_limit_and_rejects_add_up(tmp_path):
    bad = ROOT / "tests/data/bad/wrong_type.jsonl"
    counts = _import(bad, tmp_path / "r0", tmp_path / "m.json", limit=1)
    assert counts["kept"] == 1
    assert counts["rejected"] >= 1
    assert counts["kept"] + counts["over_limit"] + counts["rejected"] + counts["blank"] == counts["total"]
    rejects = (tmp_path / "r0" / "rejects.jsonl").read_text().splitlines()
    assert len(rejects) == counts["rejected"]
    assert "line 7: field 'output': expected str, got int" in rejects[-1]
    assert counts["rejects_by_reason"] == {
        "field 'instruction': expected str, got list": 1,
        "field 'output': expected str, got int": 1,
    }
    assert sum(counts["rejects_by_reason"].values()) == counts["rejected"]


def test_nothing_kept_fails_naming_file_and_top_reasons(tmp_path):
    """A file whose every record is rejected must fail the stage, not hand an empty round 0 to training."""
    image = {"type": "image_url", "image_url": {"url": "file:///cat.png"}}
    listed = {"messages": [{"role": "user", "content": [image]}, {"role": "assistant", "content": "x"}]}
    rows = [listed] * 10 + [{"instruction": "Q?"}] * 2
    source = tmp_path / "seed" / "x.jsonl"
    source.parent.mkdir()
    source.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")  # a blank line is not a record
    out = tmp_path / "round_0"
    out.mkdir()
    (out / "train.jsonl").write_text('{"id": "stale", "instruction": "old", "output": "run"}\n')
    (out / "dataset_info.json").write_text('{"middo_round_0": {"file_name": "train.jsonl"}}\n')

    with pytest.raises(MiddoError) as err:
        _import(source, out, tmp_path / "import.json")
    msg = str(err.value)
    assert msg.startswith(f"{source}: 0 of 12 records kept; rejects: 10 x ")
    assert (
        "10 x \"field 'messages[i].content[i]': part of type 'image_url' is not text; expected text parts only\""
        in msg
    )
    assert "2 x \"missing required field 'messages'\"" in msg  # the schema comes from the first record
    assert msg.endswith(f"(see {out / 'rejects.jsonl'})")
    assert len((out / "rejects.jsonl").read_text().splitlines()) == 12  # kept so the user can look
    assert not (out / "train.jsonl").exists()  # no round 0 that looks valid, not even a stale one
    assert not (out / "dataset_info.json").exists()  # nor one that LLaMA-Factory would try to train on
    assert not (tmp_path / "import.json").exists()


def test_openai_typed_content_parts_import_and_non_text_parts_are_rejected_by_reason(tmp_path):
    """OpenAI API exports write content as typed parts; a whole such file used to import 0 records."""

    def conv(user, assistant):
        return {
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                {"role": "user", "content": user},
                {"role": "assistant", "content": assistant},
            ]
        }

    rows = [
        conv([{"type": "text", "text": "Name a prime."}, {"type": "text", "text": "Just one."}], "7"),
        conv([{"type": "text", "value": "Name a colour."}], [{"type": "output_text", "text": "Red."}]),
        conv("Plain string content.", "Still fine."),
        conv([{"type": "text", "text": "What is shown?"}, {"type": "image_url", "image_url": {"url": "x"}}], "A cat."),
        conv([{"type": "input_audio", "input_audio": {"data": "..."}}], "Hello."),
        conv("Plain string content.", "Still fine."),  # the same as line 3, no ids in the file
    ]
    source = tmp_path / "parts.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    counts = _import(source, tmp_path / "r0", tmp_path / "m.json")
    out = read_dataset(tmp_path / "r0" / "train.jsonl").records
    assert [(r.system, r.instruction, r.output) for r in out] == [
        ("Be brief.", "Name a prime.\nJust one.", "7"),
        ("Be brief.", "Name a colour.", "Red."),
        ("Be brief.", "Plain string content.", "Still fine."),
    ]
    assert counts["kept"] == 3 and counts["rejected"] == 3 and counts["total"] == 6
    assert counts["rejects_by_reason"] == {
        "field 'messages[i].content[i]': part of type 'image_url' is not text; expected text parts only": 1,
        "field 'messages[i].content[i]': part of type 'input_audio' is not text; expected text parts only": 1,
        "exact duplicate of an earlier record": 1,
    }
    rejects = [json.loads(line) for line in (tmp_path / "r0" / "rejects.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rejects] == [
        "line 4: field 'messages[1].content[1]': part of type 'image_url' is not text; expected text parts only",
        "line 5: field 'messages[1].content[0]': part of type 'input_audio' is not text; expected text parts only",
        "line 6: exact duplicate of line 3",
    ]
