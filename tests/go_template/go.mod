module mm/tests/go_template

go 1.18
