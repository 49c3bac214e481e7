from ponybot.cli import run

run()
