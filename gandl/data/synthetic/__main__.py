"""python -m gandl.data.synthetic: the CLI in `cli`."""

from gandl.data.synthetic.cli import main

main()
