"""eniway-cloudsim: an emulator of the ECS ENI API, metadata service and VPC network."""
