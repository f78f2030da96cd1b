from loraflow.cli import main

main()
