module fedkube.local/fktools

go 1.22
