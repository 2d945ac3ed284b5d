"""The ``annif-ebm`` command: what Annif's own CLI has no place for.

It reads projects the way ``annif`` does (``ANNIF_PROJECTS``,
``ANNIF_DATADIR``, ``--projects``) through Annif's own CLI helpers.
"""

from __future__ import annotations

import sys

import click
import click_log
from flask.cli import FlaskGroup

import annif
import annif.registry
from annif import cli_util
from annif.exception import AnnifException

from . import register
from .explain import explain_project
from .explain_format import as_html, as_json, as_text

click_log.basic_config(annif.logger)
cli = FlaskGroup(create_app=annif.create_flask_app, add_default_commands=False,
                 add_version_option=False, help="Commands of the annif-ebm backend.")
cli.params = [opt for opt in cli.params if opt.name not in ("env_file", "app")]


@cli.command("explain")
@cli_util.project_id
@click.argument("paths", type=click.Path(exists=True, dir_okay=False, allow_dash=True),
                nargs=-1)
@click.option("--limit", "-l", default=10, show_default=True, type=click.IntRange(1),
              help="Maximum number of subjects")
@click.option("--format", "-f", "output_format", default="text", show_default=True,
              type=click.Choice(["text", "json", "html"]), help="Output format")
@click.option("--output", "-O", type=click.Path(dir_okay=False, writable=True),
              help="Write to this file instead of standard output")
@click.option("--language", "-L", help="Language of subject labels")
@cli_util.backend_param_option
@cli_util.common_options
def run_explain(project_id, paths, limit, output_format, output, language, backend_param):
    """
    Explain the subjects an ebm project suggests for a document from
    standard input or for document files: the passages that matched each
    subject's labels, similar training documents with it, how often it is
    used, and what moved its score.
    """
    register()
    project = cli_util.get_project(project_id)
    language = language or project.vocab_lang
    if language not in project.vocab.languages:
        raise click.BadParameter(f'language "{language}" not supported by vocabulary')
    if not paths or paths == ("-",):
        names, texts = ["standard input"], [sys.stdin.read()]
    else:
        names, texts = list(paths), [_read(path) for path in paths]
    try:
        params = cli_util.parse_backend_params(backend_param, project).get(
            project.config.get("backend"), {})
        explanations = explain_project(project, texts, limit, params, language)
    except AnnifException as err:
        raise click.ClickException(str(err)) from None
    if output_format == "json":
        page = as_json(explanations, names)
    elif output_format == "html":
        page = as_html(explanations, names, f"Why these subjects? {project.name}")
    else:
        page = as_text(explanations, names)
    if output:
        with open(output, "w", encoding="utf-8") as file:
            file.write(page)
    else:
        click.echo(page)


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    with open(path, errors="replace", encoding="utf-8-sig") as file:
        return file.read()


def main() -> None:
    cli()
