module ollamarender

go 1.19
