from banger.cli.main import main

main()
