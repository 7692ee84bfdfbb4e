# Keep-alive requests/s and p99 latency against concurrent connections, from the curve.dat that
# examples/bench_summary.py writes:  gnuplot -e "data='curve.dat'; out='curve.png'" bench_curve.gp
set terminal pngcairo size 1100,460 font "sans,10"
set output out
set multiplot layout 1,2 title "Keep-alive HTTP through each balancer (wrk, medians of rounds; loopback, 2 cores)"
set logscale x
set xlabel "concurrent connections"
set grid
set key top left
set xtics (1, 10, 100, 1000, 5000)
set ylabel "requests/s"
set yrange [0:*]
plot data using 1:2 with linespoints lw 2 title "direct", \
     '' using 1:5 with linespoints lw 2 title "Ballast", \
     '' using 1:3 with linespoints lw 2 title "HAProxy 2.6", \
     '' using 1:4 with linespoints lw 2 title "nginx 1.22 stream"
set ylabel "p99 latency (ms)"
set logscale y
set yrange [*:*]
set key top left
plot data using 1:6 with linespoints lw 2 title "direct", \
     '' using 1:9 with linespoints lw 2 title "Ballast", \
     '' using 1:7 with linespoints lw 2 title "HAProxy 2.6", \
     '' using 1:8 with linespoints lw 2 title "nginx 1.22 stream"
unset multiplot
