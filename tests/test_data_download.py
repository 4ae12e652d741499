"""``mygpt data download``: wikitext-103, ``hf:`` and local sources, all offline.

Tiny parquet files are made with pyarrow inside each test and reach the code either through a
real huggingface_hub cache laid out on disk (``--offline``) or through a patched download function.
No test touches the network.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from mygpt.cli import cli
from mygpt.data import corpus_files, read_text
from mygpt.data import download as dl
from mygpt.errors import MygptError

WT_ROWS = {
    # wikitext rows are lines with their own newline; blank rows are "".
    "train-00000-of-00002": [
        "",
        " = Valkyria Chronicles III = \n",
        "",
        " Senjō no Valkyria 3 is a game .\n",
        " = = Gameplay = = \n",
        " As with previous games , the player = moves = units .\n",
    ],
    "train-00001-of-00002": [" = = = Sub = = = \n", " Second shard text .\n"],
    "validation-00000-of-00001": [" = Robert Boulter = \n", " Robert is an actor .\n"],
    "test-00000-of-00001": [" = Test = \n", " Test line € .\n"],
}


def write_parquet(path: Path, rows: list[str], column: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({column: rows}), path, row_group_size=2)
    return path


def fake_hub_cache(root: Path, repo: str, revision: str, files: dict[str, list[str]]) -> Path:
    """The on-disk layout huggingface_hub reads with local_files_only (a snapshot per commit)."""
    snap = root / ("datasets--" + repo.replace("/", "--")) / "snapshots" / revision
    for name, rows in files.items():
        write_parquet(snap / name, rows)
    refs = root / ("datasets--" + repo.replace("/", "--")) / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / "main").write_text(revision)
    return snap


def wikitext_cache(root: Path) -> Path:
    files = {f"{dl.WIKITEXT_CONFIG}/{k}.parquet": v for k, v in WT_ROWS.items()}
    return fake_hub_cache(root, dl.WIKITEXT_REPO, dl.WIKITEXT_REVISION, files)


@pytest.mark.parametrize(
    "line, heading",
    [
        (" = Valkyria Chronicles III = \n", True),
        (" = = Gameplay = = \n", True),
        ("= = = Sub = = =", True),
        (" The result was 2 = 3 .\n", False),
        (" = \n", False),
        ("", False),
        (" a = b = c \n", False),
    ],
)
def test_is_heading(line, heading):
    assert dl.is_heading(line) is heading


def test_wikitext_through_the_real_hub_cache_offline(tmp_path):
    hub = tmp_path / "hub"
    wikitext_cache(hub)
    out = tmp_path / "wt"
    res = dl.download("wikitext-103", out, offline=True, cache_dir=str(hub), quiet=True)
    assert list(res.files) == ["train.txt", "valid.txt", "test.txt"]
    train = (out / "train.txt").read_text(encoding="utf-8")
    assert train == (
        " Senjō no Valkyria 3 is a game .\n"
        " As with previous games , the player = moves = units .\n"
        " Second shard text .\n"
    )
    assert (out / "valid.txt").read_text() == " Robert is an actor .\n"
    assert (out / "test.txt").read_text(encoding="utf-8") == " Test line € .\n"
    m = json.loads((out / "corpus.json").read_text())
    assert m["revision"] == dl.WIKITEXT_REVISION and m["splits"]["train"]["headings_removed"] == 3
    # The directory is a corpus in the book's order: train + valid + test.
    assert [f.name for f in corpus_files(out)] == ["train.txt", "valid.txt", "test.txt"]
    assert read_text(out).endswith(" Robert is an actor .\n Test line € .\n")


def test_wikitext_max_bytes_stops_downloading(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    wikitext_cache(hub)
    fetched = []
    orig = dl._hf_hub_download

    def spy(**kw):
        fetched.append(kw["filename"])
        return orig(**kw)

    monkeypatch.setattr(dl, "_hf_hub_download", spy)
    res = dl.download(
        "wikitext-103", tmp_path / "wt", max_bytes=40, offline=True, cache_dir=str(hub), quiet=True
    )
    assert res.files["train.txt"] == len(" Senjō no Valkyria 3 is a game .\n".encode())
    # The second train shard was never fetched: the first already filled --max-bytes.
    assert not any("train-00001" in f for f in fetched)
    assert json.loads((tmp_path / "wt" / "corpus.json").read_text())["splits"]["train"][
        "truncated_at_max_bytes"
    ]


def test_second_download_reuses_the_text(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    wikitext_cache(hub)
    out = tmp_path / "wt"
    dl.download("wikitext-103", out, offline=True, cache_dir=str(hub), quiet=True)
    monkeypatch.setattr(dl, "_hf_hub_download", lambda **kw: pytest.fail("downloaded again"))
    res = dl.download("wikitext-103", out, offline=True, cache_dir=str(hub), quiet=True)
    assert res.files["train.txt"] > 0


def test_offline_with_an_empty_cache_names_dataset_and_way_out(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MygptError) as e:
        dl.download("wikitext-103", tmp_path / "wt", cache_dir=str(tmp_path / "empty"), quiet=True)
    msg = str(e.value)
    assert "Salesforce/wikitext" in msg and "HF_HUB_OFFLINE=1" in msg and "cache" in msg
    assert "\n" not in msg


def test_no_network_names_dataset_and_offline_option(tmp_path, monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    def no_network(**kw):  # what hf_hub_download raises when the Hub cannot be reached
        raise LocalEntryNotFoundError(
            "An error happened while trying to locate the file on the Hub"
        )

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(dl, "_hf_hub_download", no_network)
    r = CliRunner().invoke(cli, ["data", "download", "wikitext-103", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1
    err = r.stderr.splitlines()[-1]  # progress lines come first
    assert err.startswith("error: ")
    assert "Salesforce/wikitext" in err and "unreachable" in err
    assert "--offline" in err and "HF_HUB_OFFLINE=1" in err


def test_listing_without_network(tmp_path, monkeypatch):
    class ConnectError(Exception):  # stands for requests/httpx connection errors
        pass

    ConnectError.__module__ = "httpx"

    def boom(repo, rev):
        raise ConnectError("[Errno 111] Connection refused")

    monkeypatch.setattr(dl, "_hf_list_files", boom)
    with pytest.raises(MygptError, match=r"'wikimedia/wikipedia'.*unreachable.*--offline"):
        dl.download("hf:wikimedia/wikipedia:20231101.en", tmp_path / "o", quiet=True)


def test_generic_hf_source_with_patched_download(tmp_path, monkeypatch):
    src = tmp_path / "remote"
    files = {
        "20231101.en/train-00000-of-00002.parquet": ["Anarchism is a philosophy.", "Autism is…"],
        "20231101.en/train-00001-of-00002.parquet": ["Third article.\n"],
        "20231101.fr/train-00000-of-00001.parquet": ["Pas celui-ci."],
    }
    for name, rows in files.items():
        write_parquet(src / name, rows)
    monkeypatch.setattr(dl, "_hf_list_files", lambda repo, rev: sorted(files) + ["README.md"])
    seen = []

    def fake_download(**kw):
        seen.append((kw["repo_id"], kw["filename"], kw["revision"], kw["local_files_only"]))
        return str(src / kw["filename"])

    monkeypatch.setattr(dl, "_hf_hub_download", fake_download)
    r = CliRunner().invoke(
        cli,
        [
            "data",
            "download",
            "hf:wikimedia/wikipedia:20231101.en",
            "--out",
            str(tmp_path / "wiki"),
            "--revision",
            "abc",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    text = (tmp_path / "wiki" / "train.txt").read_text(encoding="utf-8")
    assert text == "Anarchism is a philosophy.\n\nAutism is…\n\nThird article.\n\n"
    assert [s[1].split("/")[0] for s in seen] == ["20231101.en"] * 2
    assert all(s[0] == "wikimedia/wikipedia" and s[2] == "abc" and not s[3] for s in seen)
    assert "train.txt" in r.stdout


def test_truncated_parquet(tmp_path):
    p = write_parquet(tmp_path / "train-00000-of-00001.parquet", ["some text\n"] * 500)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(MygptError) as e:
        list(dl.iter_parquet_texts(p))
    msg = str(e.value)
    assert "truncated or not a parquet file" in msg and "--force-download" in msg
    assert "\n" not in msg
    # Through the CLI, as a local source: one line, exit 1.
    r = CliRunner().invoke(cli, ["data", "download", str(p), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "truncated" in r.stderr


def test_parquet_without_text_column(tmp_path):
    p = write_parquet(tmp_path / "x.parquet", ["a"], column="content")
    with pytest.raises(MygptError, match="no 'text' column.*content.*--text-column"):
        list(dl.iter_parquet_texts(p))
    assert list(dl.iter_parquet_texts(p, "content")) == ["a"]


def test_local_sources(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    (d / "a.txt").write_text("alpha\n", encoding="utf-8")
    (d / "b.txt").write_text("beta\n", encoding="utf-8")
    res = dl.download(str(d), tmp_path / "out", quiet=True)
    assert (tmp_path / "out" / "train.txt").read_text() == "alpha\nbeta\n"
    assert res.files == {"train.txt": 11}
    res = dl.download(str(d / "a.txt"), tmp_path / "out2", max_bytes=3, quiet=True)
    assert res.files == {"train.txt": 0}  # whole lines only: "alpha\n" does not fit in 3 bytes
    (d / "c.txt").write_bytes(b"ok\nbad \xfe here\n")
    r = CliRunner().invoke(cli, ["data", "download", str(d), "--out", str(tmp_path / "o3")])
    assert r.exit_code == 1
    assert "byte offset 7 (line 2" in r.stderr and "--encoding-errors" in r.stderr
    with pytest.raises(MygptError, match="does not exist"):
        dl.download(str(tmp_path / "nope"), tmp_path / "o4", quiet=True)


def test_bad_source_spec(tmp_path):
    r = CliRunner().invoke(cli, ["data", "download", "hf:justaname", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "hf:OWNER/NAME[:CONFIG]" in r.stderr


def test_max_bytes_accepts_units():
    from mygpt.data.cli import ByteSize

    conv = ByteSize().convert
    assert conv("50M", None, None) == 50_000_000
    assert conv("1.5G", None, None) == 1_500_000_000
    assert conv("123", None, None) == 123
    assert conv("4kB", None, None) == 4000
    with pytest.raises(Exception, match="not a byte count"):
        conv("lots", None, None)


def test_no_dns_fails_at_once_without_the_hubs_retries(tmp_path, monkeypatch):
    """With no name resolution the error comes before huggingface_hub's ~25 s of retries."""
    import socket

    import huggingface_hub

    for var in dl._PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_dns(host, port, *a, **kw):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda **kw: pytest.fail("reached the Hub client")
    )
    with pytest.raises(MygptError, match=r"'Salesforce/wikitext'.*unreachable \(gaierror\)"):
        dl.download("wikitext-103", tmp_path / "o", cache_dir=str(tmp_path / "c"), quiet=True)


def test_behind_a_proxy_names_are_left_to_the_proxy(monkeypatch):
    import socket

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **kw: pytest.fail("resolved locally"))
    dl._check_hub_resolves()  # no lookup, no error
