"""EC2 for a course: key pairs, security groups, images, instances, prices, and the invoke tasks over them."""
