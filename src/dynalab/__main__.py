from dynalab.cli import main

main()
