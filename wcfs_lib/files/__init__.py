"""The model of the files wcfs shows: each file's head and its clients, the
`@<tid>/` directories, channels, the block cache and prefetch."""
