"""`python -m causal_sprites` runs the CLI."""

from causal_sprites.cli import main

main()
