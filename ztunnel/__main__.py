from ztunnel.cli import main

main()
