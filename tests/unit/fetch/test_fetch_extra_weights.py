"""fetch-model for the extra weights of a pipeline (``--content weights``): an adapter's or component's
archive into the model's copy, with the same policy and limits as a model's source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fetch_support import FAKE_MODEL, OPT_INS, Server, make_tar, run

from kubediffusion.fetch import sources
from kubediffusion.fetch.main import MARKER, main

LORA = {"pytorch_lora_weights.safetensors": "w" * 100}


def test_an_adapter_archive_is_extracted_into_the_models_copy(server: Server, tmp_path: Path) -> None:
    make_tar(server.root / "style.tar.gz", LORA, prefix="style-a/")
    model = tmp_path / "models" / "key"
    assert run(model, tmp_path, "--url", server.url("style.tar.gz"), *OPT_INS)[0] != 0  # not a pipeline
    dest = model / "adapters" / "style-a"
    code, summary = run(dest, tmp_path, "--content", "weights", "--url", server.url("style.tar.gz"), *OPT_INS)
    assert code == 0, summary
    assert (dest / "pytorch_lora_weights.safetensors").read_text() == LORA["pytorch_lora_weights.safetensors"]
    assert summary["revision"].startswith("sha256:")
    assert json.loads((dest / MARKER).read_text())["source"] == f"url:{server.url('style.tar.gz')}"


def test_a_weights_archive_without_safetensors_is_refused_permanently(server: Server, tmp_path: Path) -> None:
    make_tar(server.root / "pickle.tar", {"lora.bin": "p" * 10})
    code, summary = run(tmp_path / "a", tmp_path, "--content", "weights", "--url", server.url("pickle.tar"), *OPT_INS)
    assert code == 2 and ".safetensors" in summary["error"]
    assert not (tmp_path / "a").exists()


def test_the_named_file_must_be_in_the_archive(server: Server, tmp_path: Path) -> None:
    make_tar(server.root / "unet.tar", {"other.safetensors": "u"})
    args = ("--content", "weights", "--file", "unet.safetensors", "--url", server.url("unet.tar"), *OPT_INS)
    code, summary = run(tmp_path / "c", tmp_path, *args)
    assert code == 2 and "unet.safetensors" in summary["error"]
    make_tar(server.root / "unet.tar", {"unet.safetensors": "u"})
    code, summary = run(tmp_path / "c", tmp_path, *args)
    assert code == 0 and (tmp_path / "c" / "unet.safetensors").is_file()
    assert json.loads((tmp_path / "c" / MARKER).read_text())["source"].endswith("#unet.safetensors")


def test_a_single_safetensors_file_is_saved_as_it_is(server: Server, tmp_path: Path) -> None:
    (server.root / "lora.safetensors").write_text("w" * 64)
    url = server.url("lora.safetensors")
    code, summary = run(tmp_path / "a", tmp_path, "--content", "weights", "--url", url, *OPT_INS)
    assert code == 0, summary
    assert (tmp_path / "a" / "lora.safetensors").read_text() == "w" * 64
    assert summary["revision"].startswith("sha256:")
    code, summary = run(
        tmp_path / "b", tmp_path, "--content", "weights", "--file", "x/u.safetensors", "--url", url, *OPT_INS
    )
    assert code == 0 and (tmp_path / "b" / "x" / "u.safetensors").is_file(), "saved as the spec's file"
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert leftovers == [], "no download or staging files left"


def test_a_safetensors_url_is_not_a_pipeline(server: Server, tmp_path: Path) -> None:
    (server.root / "model.safetensors").write_text("w")
    code, summary = run(tmp_path / "m", tmp_path, "--url", server.url("model.safetensors"), *OPT_INS)
    assert code == 2 and "not a .tar.gz, .tgz, .tar, .zip file" in summary["error"], summary
    assert not (tmp_path / "m").exists()


def test_a_pickle_url_is_refused_for_weights(server: Server, tmp_path: Path) -> None:
    (server.root / "lora.bin").write_text("p")
    code, summary = run(tmp_path / "p", tmp_path, "--content", "weights", "--url", server.url("lora.bin"), *OPT_INS)
    assert code == 2 and ".safetensors" in summary["error"], summary


def test_a_pipeline_archive_still_needs_model_index(server: Server, tmp_path: Path) -> None:
    make_tar(server.root / "m.tar", FAKE_MODEL)
    assert run(tmp_path / "m", tmp_path, "--url", server.url("m.tar"), *OPT_INS)[0] == 0


def test_the_download_policy_applies_to_extra_weights(server: Server, tmp_path: Path) -> None:
    make_tar(server.root / "style.tar", LORA)
    code, summary = run(tmp_path / "x", tmp_path, "--content", "weights", "--url", server.url("style.tar"))
    assert code == 2 and not (tmp_path / "x").exists(), summary  # plain http to loopback: refused by default


@pytest.mark.parametrize("file", ["/abs.safetensors", "../up.safetensors"])
def test_file_must_be_relative(tmp_path: Path, file: str) -> None:
    with pytest.raises(SystemExit):
        main(["--dest", str(tmp_path / "d"), "--content", "weights", "--file", file, "--url", "https://h/a.tar"])


def test_file_needs_weights_content(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--dest", str(tmp_path / "d"), "--file", "a.safetensors", "--url", "https://h/a.tar"])


def test_a_hugging_face_file_downloads_only_that_file_and_a_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    calls: dict[str, object] = {}

    class Info:
        sha = "abc"

    class Api:
        def __init__(self, token: str | None) -> None:
            pass

        def model_info(self, repo: str, revision: str) -> Info:
            return Info()

    def snapshot(**kwargs: object) -> None:
        calls.update(kwargs)

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    revision = sources.fetch_huggingface("ByteDance/SDXL-Lightning", "main", Path("/nonexistent"), file="u.safetensors")
    assert revision == "abc" and calls["revision"] == "abc"
    assert calls["allow_patterns"] == ["u.safetensors", "config.json"]
    sources.fetch_huggingface("org/repo", "main", Path("/nonexistent"))
    assert calls["allow_patterns"] is None
