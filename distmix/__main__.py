from distmix.cli import run

run()
