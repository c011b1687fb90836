"""The course layer: what one course does with its machines, built on the library face (fleet.app)
and the framework below it. The class report (classreport.py, with the Jupyter probe it sends in
classreport_jupyter.py), access and handouts (access.py), the course's images (imaging/) and the
students' work at the end of a course (coursework/). The framework (engine, inventory, transport)
and fleet.app never import this package; the command faces (fleet.cli, fleet.cli_cloud, tasks.py)
do."""
