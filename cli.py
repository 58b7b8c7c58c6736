"""alphafuse command line: a thin click layer over functions a notebook can call too."""
import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """alphafuse: fuse frozen TimeSformer and AST embeddings with a scaled-concat head."""


if __name__ == "__main__":
    main()
