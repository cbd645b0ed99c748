"""Published backbones from anywhere, as a verified local folder: `fetch(spec)`.

`spec` is one of:

* a name in an index (`--index URL_OR_PATH`, else `$AUFORGE_HUB_INDEX`);
* an `http(s)://` or `file://` folder URL of a published backbone (its index is looked for
  beside the folder, in `../index.json`, unless `--index` names it);
* a local folder (used where it is);
* `hf-hub:owner/repo[@revision]` (timm's and open_clip's spelling), `hf://owner/repo` or
  `hf:owner/repo`: a Hugging Face Hub repository, through huggingface_hub (which honours
  `HF_HUB_OFFLINE`).

Downloads land in the cache (`$AUFORGE_HUB_CACHE`, else `~/.cache/auforge/hub`): each file
goes to a `.part` file that a later attempt resumes with an HTTP Range request, is checked
against the sha256 the index lists (a mismatch deletes it and fails), and the folder is renamed
into place only once every file is verified. Only `.safetensors` and `.json` files are ever
loaded; the index may list nothing else but the `README.md` model card. An index is untrusted:
its names must be plain folder and file names, and every write is checked to land in the cache.

    python -m finetune.hub download NAME_OR_URL [--index URL_OR_PATH] [--cache DIR]
    python -m finetune.hub list [--index URL_OR_PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import urljoin, urlparse
from urllib.request import Request, url2pathname, urlopen

MODEL_NAME, CONFIG_NAME, CARD_NAME, INDEX_NAME = "model.safetensors", "config.json", "README.md", "index.json"
INDEX_SCHEMA = "auforge.index/1"
LOADABLE = (".safetensors", ".json")  # no pickles: nothing else is ever loaded
FETCHABLE = (*LOADABLE, ".md")  # the model card is text for people, never loaded
CACHE_ENV, INDEX_ENV = "AUFORGE_HUB_CACHE", "AUFORGE_HUB_INDEX"
ATTEMPTS = 3  # tries per file, each resuming where the one before stopped
CHUNK = 1 << 16
TIMEOUT_S = 60

log = logging.getLogger("finetune.hub")


class HubError(RuntimeError):
    """A backbone could not be had, or not verified: the message names the source and the problem."""


@dataclass(frozen=True)
class FileEntry:
    name: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Entry:
    name: str
    url: str  # the folder, relative to the index (or absolute)
    files: tuple[FileEntry, ...]
    architecture: str = ""
    created: str = ""

    @property
    def digest(self) -> str:
        """Names this exact publication: a republished name gets a new cache folder."""
        return hashlib.sha256("".join(f"{f.name}:{f.sha256};" for f in self.files).encode()).hexdigest()[:16]


def cache_root(cache: str | Path | None = None) -> Path:
    """Where downloads go: `cache`, else $AUFORGE_HUB_CACHE, else ~/.cache/auforge/hub. A setting of
    its own: $AUFORGE_CACHE (`shards.synthetic.cache_root`, the rendered sets) does not move it."""
    return Path(cache or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "auforge" / "hub").expanduser()


# How a Hugging Face Hub repository is named: timm's and open_clip's spelling, and auforge's two.
# "hf://" before "hf:", which it starts with.
HF_PREFIXES = ("hf-hub:", "hf://", "hf:")


def hf_repo(spec: str) -> str | None:
    """`owner/repo[@revision]` when `spec` names a Hugging Face Hub repository, else None."""
    for prefix in HF_PREFIXES:
        if spec.startswith(prefix):
            return spec[len(prefix):]
    return None


def is_remote(spec: str) -> bool:
    return "://" in spec or hf_repo(spec) is not None


# ---------------------------------------------------------------- untrusted names and paths


def unsafe_part(name) -> str | None:
    """Why `name` is not one plain path part, which is all a name from an index may be (its
    folder and files are made in the cache under it); None when it is one."""
    if not isinstance(name, str) or not name:
        return "it is empty or not a string"
    if "\0" in name:
        return "it holds a NUL character"
    if name.startswith(("/", "\\")):
        return "it is an absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "it climbs out of its folder with '..'"
    if "/" in name or "\\" in name:
        return "it holds a path separator"
    if name == ".":
        return "it is '.'"
    return None


def plain(name, what: str):
    """`name`, refused unless it is one plain path part; `what` says whose name it is."""
    why = unsafe_part(name)
    if why:
        raise HubError(f"{what} {name!r} refused: {why}; only a plain file or folder name is taken")
    return name


def inside(path: Path, root: Path) -> Path:
    """`path`, refused unless it lands in `root` with every symlink followed: a link planted in
    the cache must not carry a write elsewhere."""
    real, base = path.resolve(), root.resolve()
    if real != base and base not in real.parents:
        raise HubError(f"{path}: leads to {real}, outside the cache folder {base}; nothing is written there")
    return path


# ---------------------------------------------------------------- indexes


def _file_entry(raw: dict, where: str) -> FileEntry:
    name = plain(raw.get("name", ""), f"{where}: file")
    if name.startswith(".") or not name.endswith(FETCHABLE):
        raise HubError(f"{where}: file {name!r} refused: only plain {', '.join(FETCHABLE)} file names are fetched")
    if not re.fullmatch(r"[0-9a-f]{64}", str(raw.get("sha256", ""))) or not isinstance(raw.get("bytes"), int):
        raise HubError(f"{where}: file {name!r} needs a sha256 (64 hex digits) and a byte count")
    return FileEntry(name, raw["sha256"], raw["bytes"])


def parse_index(raw: dict, where: str) -> list[Entry]:
    """Validate an index (schema `auforge.index/1`); `where` names it in errors."""
    if not isinstance(raw, dict) or raw.get("schema") != INDEX_SCHEMA:
        found = raw.get("schema") if isinstance(raw, dict) else type(raw).__name__
        raise HubError(f"{where}: not an auforge index (schema {found!r}, expected {INDEX_SCHEMA!r})")
    entries = []
    for item in raw.get("backbones", []):
        try:
            name = plain(item["name"], f"{where}: entry")
            files = tuple(_file_entry(f, f"{where}: {name}") for f in item["files"])
            entries.append(Entry(name, item.get("url", f"{name}/"), files, item.get("architecture", ""),
                                 item.get("created", "")))  # fmt: skip
        except (KeyError, TypeError) as e:
            raise HubError(f"{where}: malformed entry {item!r} ({e})") from None
        if not any(f.name == MODEL_NAME for f in files) or not any(f.name == CONFIG_NAME for f in files):
            raise HubError(f"{where}: {name} lists no {MODEL_NAME} or no {CONFIG_NAME}")
    return entries


def _as_url(location: str) -> str:
    if "://" in location:
        return location
    path = Path(location).expanduser().resolve()
    return (path / INDEX_NAME if path.is_dir() else path).as_uri()


def read_index(location: str) -> tuple[list[Entry], str]:
    """The entries of an index at a path, a folder holding `index.json`, or a URL; and its URL,
    against which the entries' folder URLs resolve."""
    url = _as_url(location)
    try:
        stream, _ = _open(url, 0)
        with stream:
            raw = json.loads(stream.read())
    except (OSError, http.client.HTTPException) as e:
        raise HubError(f"{url}: cannot read the index ({e})") from None
    except json.JSONDecodeError as e:
        raise HubError(f"{url}: the index is not valid JSON ({e})") from None
    return parse_index(raw, url), url


def find(entries: list[Entry], name: str, where: str) -> Entry:
    for entry in entries:
        if entry.name == name:
            return entry
    offers = ", ".join(sorted(e.name for e in entries)) or "nothing"
    raise HubError(f"{where}: no backbone named {name!r}; this index offers: {offers}")


# ---------------------------------------------------------------- transfers


def _open(url: str, offset: int):
    """A readable stream of `url` from byte `offset`, and the offset it really starts at (0 when
    an HTTP server ignores the Range request: the caller then starts over)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        try:
            f = open(url2pathname(parsed.path), "rb")
        except FileNotFoundError:
            raise HubError(f"{url}: no such file") from None
        f.seek(offset)
        return f, offset
    if parsed.scheme not in ("http", "https"):
        raise HubError(f"{url}: unsupported scheme {parsed.scheme!r} (http, https, file, hf)")
    headers = {"User-Agent": "auforge-hub", **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        response = urlopen(Request(url, headers=headers), timeout=TIMEOUT_S)
    except HTTPError as e:
        if e.code == 416 and offset:  # our part is longer than the file there: start over
            return _open(url, 0)
        raise HubError(f"{url}: HTTP {e.code} {e.reason}") from None
    if not offset or response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
        return response, offset
    if response.status == 206:  # another range than the one asked for: ask for the whole file
        response.close()
        return _open(url, 0)
    return response, 0  # the server ignores Range and sends the whole file


def _transfer(url: str, part: Path, size: int, progress: bool) -> None:
    """Append the rest of `url` to `part` (resuming after what it holds); raises OSError or
    HTTPException when the transfer breaks off, with what arrived kept."""
    from tqdm import tqdm

    have = part.stat().st_size if part.exists() else 0
    if have == size:
        return
    stream, start = _open(url, have if have < size else 0)
    with stream, open(part, "r+b" if part.exists() else "wb") as f:
        f.seek(start)
        f.truncate()
        with tqdm(total=size, initial=start, unit="B", unit_scale=True, desc=part.name[: -len(".part")],
                  disable=None if progress else True, leave=False) as bar:  # fmt: skip
            while chunk := stream.read(CHUNK):
                if f.tell() + len(chunk) > size:
                    raise HubError(f"{url}: the server sends more than the {size} bytes the index lists")
                f.write(chunk)
                bar.update(len(chunk))
        f.flush()
        os.fsync(f.fileno())
        if f.tell() < size:
            raise ConnectionError(f"the transfer ended after {f.tell()} of {size} bytes")


def _verify(path: Path, expected: FileEntry, url: str) -> None:
    from shards.verify import sha256_of

    digest = sha256_of(path)
    if digest != expected.sha256:
        path.unlink()
        raise HubError(f"{url}: sha256 {digest} does not match the index's {expected.sha256}; "
                       f"the downloaded file was deleted")  # fmt: skip


def download_file(url: str, folder: Path, expected: FileEntry, progress: bool = True) -> Path:
    """`folder/NAME`, fetched through `folder/NAME.part` (resumed), verified, renamed into place."""
    dest, part = inside(folder / expected.name, folder), inside(folder / f"{expected.name}.part", folder)
    if dest.exists():  # verified by an earlier, interrupted download of the folder
        return dest
    for attempt in range(1, ATTEMPTS + 1):
        try:
            _transfer(url, part, expected.bytes, progress)
            break
        except (OSError, http.client.HTTPException) as e:
            kept = part.stat().st_size if part.exists() else 0
            if attempt == ATTEMPTS:
                raise HubError(f"{url}: download interrupted ({e}); {kept} of {expected.bytes} bytes are kept in "
                               f"{part}: run again to resume") from None  # fmt: skip
            log.warning("%s: interrupted after %d bytes (%s); resuming", url, kept, e)
    _verify(part, expected, url)
    os.replace(part, dest)
    return dest


def _complete(folder: Path, entry: Entry) -> bool:
    return all((folder / f.name).is_file() and (folder / f.name).stat().st_size == f.bytes for f in entry.files)


def download(entry: Entry, folder_url: str, cache: str | Path | None = None, progress: bool = True) -> Path:
    """The entry's files, verified, in `CACHE/backbones/NAME-DIGEST/` (renamed into place whole)."""
    from shards.runlock import locked

    plain(entry.name, f"{folder_url}: backbone")  # an Entry made by hand, not parsed from an index
    top = cache_root(cache)
    root = inside(top / "backbones", top)
    root.mkdir(parents=True, exist_ok=True)
    final = inside(root / f"{entry.name}-{entry.digest}", root)
    staging = inside(root / f".{final.name}.download", root)
    with locked(inside(root / f".{final.name}.lock", root)):  # ranks of a job take turns; the later find it cached
        if _complete(final, entry):
            return final
        shutil.rmtree(final, ignore_errors=True)  # damaged in the cache: fetch it again
        staging.mkdir(exist_ok=True)
        base = folder_url.rstrip("/") + "/"
        for f in entry.files:
            download_file(urljoin(base, f.name), staging, f, progress)
        os.replace(staging, final)
    return final


# ---------------------------------------------------------------- sources


def _checked_folder(folder: Path, spec: str) -> Path:
    missing = [n for n in (MODEL_NAME, CONFIG_NAME) if not (folder / n).is_file()]
    if missing:
        raise HubError(f"{spec}: {folder} lacks {', '.join(missing)}; a published backbone needs both")
    return folder


def _entry_at(entries: list[Entry], index_url: str, folder_url: str) -> Entry:
    for entry in entries:
        if urljoin(index_url, entry.url).rstrip("/") == folder_url.rstrip("/"):
            return entry
    raise HubError(f"{folder_url}: the index {index_url} lists no backbone at this URL, so its files cannot be "
                   "verified; pass --index with the index that publishes it")  # fmt: skip


def fetch_hf(spec: str, cache: str | Path | None = None) -> Path:
    """A Hub repository's safetensors, JSON and card via huggingface_hub, into CACHE/hf."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (HfHubHTTPError, HFValidationError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)  # fmt: skip

    repo, _, revision = (hf_repo(spec) or "").partition("@")
    if not repo:
        raise HubError(f"{spec}: names no Hugging Face Hub repository (write hf-hub:owner/repo[@revision])")
    hf_cache = inside(cache_root(cache) / "hf", cache_root(cache))
    try:
        folder = Path(snapshot_download(repo, revision=revision or None, cache_dir=hf_cache,
                                        allow_patterns=[f"*{s}" for s in FETCHABLE]))  # fmt: skip
    except LocalEntryNotFoundError as e:
        if constants.HF_HUB_OFFLINE:
            raise HubError(f"{spec}: not in the cache {hf_cache}, and HF_HUB_OFFLINE is set, so the Hub is not "
                           "asked; fetch it once online, or unset HF_HUB_OFFLINE") from None  # fmt: skip
        raise HubError(f"{spec}: the Hugging Face Hub cannot be reached and the repository is not cached ({e})") from None
    except (RepositoryNotFoundError, HfHubHTTPError, HFValidationError) as e:
        raise HubError(f"{spec}: the Hugging Face Hub refused it ({e})") from None
    _verify_hf_blobs(folder, spec)
    return _checked_folder(folder, spec)


def _verify_hf_blobs(folder: Path, spec: str) -> None:
    """huggingface_hub stores large (LFS) files under their sha256, as the Hub announced it:
    the bytes on disk must hash to that name."""
    from shards.verify import sha256_of

    for f in folder.glob(f"*{LOADABLE[0]}"):
        blob = f.resolve()
        if re.fullmatch(r"[0-9a-f]{64}", blob.name) and sha256_of(blob) != blob.name:
            blob.unlink()
            raise HubError(f"{spec}: {f.name} does not hash to the sha256 the Hub announced ({blob.name}); "
                           "the cached file was deleted")  # fmt: skip


def fetch(spec: str, index: str | None = None, cache: str | Path | None = None, progress: bool = True) -> Path:
    """A local folder with the verified backbone `spec` names (see the module's docstring)."""
    if hf_repo(spec) is not None:
        return fetch_hf(spec, cache)
    if "://" in spec:
        folder_url = spec.rstrip("/") + "/"
        try:
            entries, index_url = read_index(index or urljoin(folder_url, f"../{INDEX_NAME}"))
        except HubError as e:
            if index:
                raise
            raise HubError(f"{spec}: no index beside it to verify its files against ({e}); pass --index") from None
        entry = _entry_at(entries, index_url, folder_url)
        return _checked_folder(download(entry, folder_url, cache, progress), spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _checked_folder(path, spec)
    index = index or os.environ.get(INDEX_ENV)
    if not index:
        raise HubError(f"{spec!r}: no such folder, not a URL, and no index to look the name up in "
                       f"(pass --index, or set ${INDEX_ENV})")  # fmt: skip
    entries, index_url = read_index(index)
    entry = find(entries, spec, index_url)
    folder = download(entry, urljoin(index_url, entry.url), cache, progress)
    return _checked_folder(folder, spec)


# ---------------------------------------------------------------- command line


def _list(index: str) -> None:
    entries, url = read_index(index)
    print(f"{url}: {len(entries)} backbone(s)")
    for e in entries:
        size = next(f.bytes for f in e.files if f.name == MODEL_NAME)
        print(f"  {e.name:<28} {e.architecture:<20} {size / 1e6:8.1f} MB  {e.created}  {urljoin(url, e.url)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.hub", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("download", help="fetch and verify a backbone; prints its local folder")
    get.add_argument("spec", help="a name in the index, an http(s):// or file:// folder, a folder, hf-hub:owner/repo")
    get.add_argument("--index", help=f"index path or URL (default ${INDEX_ENV}, or ../index.json beside a URL)")
    get.add_argument("--cache", help=f"cache folder (default ${CACHE_ENV}, else ~/.cache/auforge/hub)")
    show = commands.add_parser("list", help="what an index offers")
    show.add_argument("--index", default=os.environ.get(INDEX_ENV), help=f"index path or URL (default ${INDEX_ENV})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "list":
            if not args.index:
                parser.error(f"list needs --index or ${INDEX_ENV}")
            _list(args.index)
        else:
            print(fetch(args.spec, index=args.index, cache=args.cache))
    except HubError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
