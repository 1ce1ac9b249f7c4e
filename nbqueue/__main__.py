from nbqueue.cli import main

main()
