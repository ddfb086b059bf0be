#ifndef GUEST_BLKDEV_H
#define GUEST_BLKDEV_H
#endif
