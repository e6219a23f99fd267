from downlink.cli.main import main

main()
