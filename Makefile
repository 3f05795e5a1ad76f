# nodemesh: the two commands a newcomer needs (run as root on Debian 12).
#   make demo   installs what is missing, then runs `meshctl demo`
#   make test   installs what is missing, then runs every test tier
.PHONY: setup demo test lint unit fuzz netns e2e bench clean-local

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/meshctl demo

test: setup
	bash scripts/test.sh

lint: setup
	bash scripts/test.sh lint

unit: setup
	bash scripts/test.sh unit

fuzz: setup
	bash scripts/test.sh fuzz

netns: setup
	bash scripts/test.sh netns

e2e: setup
	bash scripts/test.sh e2e

bench: setup
	.venv/bin/python -m bench

clean-local: setup
	.venv/bin/meshctl local down
