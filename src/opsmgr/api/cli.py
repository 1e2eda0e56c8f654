"""`opsmgr crds`: print the CustomResourceDefinitions generated from the models, or write or check crds/."""

from __future__ import annotations

from pathlib import Path

import click

from opsmgr.api import GROUP, RESOURCES
from opsmgr.api.crd import crd_files, crd_stream, drifted_files

CRD_FILE_GLOB = f"*.{GROUP}.yaml"


def read_crd_directory(directory: Path) -> dict[str, str]:
    """The CRD files in a directory as name -> content."""
    return {path.name: path.read_text() for path in sorted(directory.glob(CRD_FILE_GLOB))}


@click.command("crds")
@click.option("--write", "write_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write one file per CRD into this directory (removing files of kinds that no longer exist).")
@click.option("--check", "check_dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="Exit 1 when this directory differs from the models.")
def crds(write_dir: Path | None, check_dir: Path | None) -> None:
    """Print every opsmgr CRD as YAML, generated from the pydantic models in opsmgr.api."""
    if write_dir is not None and check_dir is not None:
        raise click.UsageError("use --write or --check, not both")
    expected = crd_files(RESOURCES)
    if check_dir is not None:
        drifted = drifted_files(expected, read_crd_directory(check_dir))
        if drifted:
            raise click.ClickException(
                f"{check_dir} differs from the models in {', '.join(drifted)}: run `opsmgr crds --write {check_dir}`")
        click.echo(f"{check_dir}: {len(expected)} CRDs match the models")
        return
    if write_dir is not None:
        write_dir.mkdir(parents=True, exist_ok=True)
        for name in read_crd_directory(write_dir).keys() - expected.keys():
            (write_dir / name).unlink()
        for name, content in expected.items():
            (write_dir / name).write_text(content)
        click.echo(f"wrote {len(expected)} CRDs to {write_dir}")
        return
    click.echo(crd_stream(RESOURCES), nl=False)
