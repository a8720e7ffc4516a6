from foxctl.cli import main

main()
