"""Files of a dataset repository on the Hugging Face hub, fetched by pattern, and tar shards unpacked once.

Readers of hub datasets that are plain files (BirdSet's `data` branch, FSD50K's clips and CSVs, the
Parquet folders of AudioSet) name exactly the files they need as a `HubFiles`. `fetch` tries the
standard HF cache first (so a download keeps working offline), then the hub; when neither works, the
error prints one `hf download` command that fetches those files and nothing else, with their size.
"""

from __future__ import annotations

import os
import shlex
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .._io import write_json
from ..errors import DatasetError


@dataclass(frozen=True)
class HubFiles:
    """A selection of files of one hub dataset repository.

    Attributes:
        repo_id: e.g. "DBD-research-group/BirdSet".
        patterns: glob patterns relative to the repository root (`huggingface_hub` allow_patterns).
        revision: branch, tag or commit; None for main.
        size: approximate download size, shown in hints (e.g. "about 6 GB").
    """

    repo_id: str
    patterns: tuple[str, ...]
    revision: str | None = None
    size: str = ""

    def command(self, local_dir: str = "DIR") -> str:
        """The `hf download` command that fetches exactly these files into `local_dir`."""
        revision = f" --revision {self.revision}" if self.revision else ""
        include = " ".join(f"--include {shlex.quote(p)}" for p in self.patterns)
        return f"hf download {self.repo_id} --repo-type dataset{revision} {include} --local-dir {local_dir}"

    def hint(self) -> str:
        size = f" ({self.size})" if self.size else ""
        return f"`{self.command()}`{size}, then pass --data-dir DIR"

    def fetch(self, key: str) -> Path:
        """The local folder holding these files: the HF cache's snapshot if complete there, else a download.

        Raises:
            DatasetError with the `hf download` command when the files are neither cached nor reachable.
        """
        try:
            from huggingface_hub import snapshot_download
        except ImportError as exc:  # pragma: no cover - a core dependency
            raise DatasetError(f"{key}: huggingface_hub is not installed; fetch the files with {self.hint()}") from exc
        problem = ""
        for local_only in (True, False):
            try:
                folder = Path(snapshot_download(self.repo_id, repo_type="dataset", revision=self.revision,
                                                allow_patterns=list(self.patterns), local_files_only=local_only))
            except Exception as exc:  # offline, missing revision, HTTP errors: one piece of advice
                problem = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                continue
            if local_only and not any(folder.glob(p) for p in self.patterns):
                continue  # a snapshot of the revision is cached, but not these files
            return folder
        raise DatasetError(f"{key}: the files are neither in the Hugging Face cache nor reachable on the hub ({problem}). "
                           f"Fetch exactly what is needed with {self.hint()}")


def unpack_shards(shards: list[Path], out_dir: Path, progress: bool = False) -> Path:
    """Unpack tar(.gz) shards of audio files flat into `out_dir` (member basenames), once.

    Each shard is recorded as done (`.unpacked/<shard name>.json`, with its member names) only after
    all its members are in place, so an interrupted unpack resumes at the shard it was in. Members are
    written to a temporary name and renamed, so a file in `out_dir` is always whole. Only regular files
    are taken, by basename: a member path such as `data/zenodo/HSN/x.ogg` becomes `out_dir/x.ogg`, and
    no member can escape `out_dir`.

    Returns:
        out_dir.
    """
    done_dir = out_dir / ".unpacked"
    done_dir.mkdir(parents=True, exist_ok=True)
    for shard in shards:
        marker = done_dir / f"{shard.name}.json"
        if marker.exists():
            continue
        if progress:
            print(f"unpacking {shard} into {out_dir}", flush=True)
        members = []
        try:
            with tarfile.open(shard) as archive:
                for member in archive:
                    if not member.isfile():
                        continue
                    name = os.path.basename(member.name)
                    if not name or name.startswith("."):
                        continue
                    source = archive.extractfile(member)
                    tmp = out_dir / f".{name}.part"
                    with open(tmp, "wb") as sink:
                        while block := source.read(1 << 20):
                            sink.write(block)
                    os.replace(tmp, out_dir / name)
                    members.append(name)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DatasetError(f"{shard}: cannot unpack this shard ({type(exc).__name__}: {exc}); it is probably "
                               "incomplete: delete it and fetch it again, then rerun (finished shards are kept)") from exc
        write_json(marker, {"shard": shard.name, "members": members})
    return out_dir
