from ponybot.commands.cli import run

run()
