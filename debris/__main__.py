from debris.cli import main

main()
