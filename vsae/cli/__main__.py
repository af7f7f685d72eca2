from vsae.cli.app import main

main()
